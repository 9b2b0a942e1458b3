"""Baseline placements for experiments: keep, random (seeded), round-robin."""

from __future__ import annotations

import numpy as np

from services.planner.model import IntArray, Problem


def noop_placement(problem: Problem) -> IntArray:
    """Leave every guest where it is (the planner then only adds links and rules)."""
    return problem.current.copy()


def random_placement(problem: Problem, seed: int = 0) -> IntArray:
    """Movable guests spread over a random permutation of the free slots."""
    rng = np.random.default_rng(seed)
    placement = problem.current.copy()
    movable = np.flatnonzero(problem.movable())
    slots = np.repeat(np.arange(problem.n_hosts), problem.slots())
    chosen = rng.permutation(slots)[: movable.size]
    placement[movable] = chosen
    return placement


def round_robin_placement(problem: Problem) -> IntArray:
    """Movable guests in id order dealt to reachable hosts in turn, skipping full ones."""
    placement = problem.current.copy()
    free = problem.slots().copy()
    hosts = [int(x) for x in np.flatnonzero(free > 0)]
    i = 0
    for guest in np.flatnonzero(problem.movable()):
        while free[hosts[i % len(hosts)]] == 0:
            i += 1
        host = hosts[i % len(hosts)]
        placement[guest] = host
        free[host] -= 1
        i += 1
    return placement
