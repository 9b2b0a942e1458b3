"""Workloads that run inside guests and report their own throughput on the bus.

vnet adapts from frames alone; these applications are the yardstick the demo
and the evaluation measure it by. ``patterns`` is a bulk-synchronous
generator after the original's Patterns: compute, exchange with the
neighbours of a topology, wait for them, repeat.
"""
