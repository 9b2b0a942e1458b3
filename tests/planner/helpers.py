"""Small hand-made problems and an exhaustive-search oracle."""

from __future__ import annotations

import itertools

import numpy as np

from services.planner.cost import communication_cost
from services.planner.model import IntArray, Problem, Traffic


def make_problem(
    hosts: list[str],
    guests: list[str],
    edges: list[tuple[int, int, float]],
    throughput_bps: np.ndarray | float = 1e9,
    capacity: list[int] | int = 2,
    current: list[int] | None = None,
    proxy: int = 0,
    reachable: list[bool] | None = None,
) -> Problem:
    h, g = len(hosts), len(guests)
    thr = (np.full((h, h), float(throughput_bps)) if isinstance(throughput_bps, float | int)
           else np.asarray(throughput_bps, dtype=np.float64))
    np.fill_diagonal(thr, 0.0)
    cap = np.full(h, capacity) if isinstance(capacity, int) else np.asarray(capacity)
    return Problem(
        hosts=tuple(hosts), guests=tuple(guests),
        traffic=Traffic.from_edges(g, [e[0] for e in edges], [e[1] for e in edges],
                                   [e[2] for e in edges]),
        throughput_bps=thr, capacity=cap.astype(np.int64),
        current=np.asarray(current if current is not None else [0] * g, dtype=np.int64),
        proxy=proxy,
        reachable=None if reachable is None else np.asarray(reachable, dtype=bool),
    )


def optimum(problem: Problem) -> tuple[float, IntArray]:
    """The cheapest feasible placement by trying every one (tiny problems only)."""
    h, g = problem.n_hosts, problem.n_guests
    every = np.array(list(itertools.product(range(h), repeat=g)), dtype=np.int64)
    counts = np.stack([(every == x).sum(axis=1) for x in range(h)], axis=1)
    every = every[np.all(counts <= problem.slots(), axis=1)]
    c = problem.cost_matrix()
    t = problem.traffic
    costs = (c[every[:, t.u], every[:, t.v]] * t.bytes_per_s).sum(axis=1)
    best = int(np.argmin(costs))
    assert np.isclose(costs[best], communication_cost(problem, every[best]))
    return float(costs[best]), every[best]
