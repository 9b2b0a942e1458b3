"""Benchmarks: `python -m bench [NAME ...]` runs them and writes bench/results/NAME.json.

Each benchmark is a module bench/NAME.py with ``main(progress) -> BenchOutput``
(see :mod:`bench.report`); the runner finds them by listing this folder.
"""
