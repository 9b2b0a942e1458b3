"""The evaluation (`make eval`): the original VNET/VADAPT experiments on the namespace testbed.

Not a benchmark module of `python -m bench` (so `make bench` leaves it out):
`python -m bench.evaluation` runs it and writes bench/results/eval.{json,md,*.png}.
"""
