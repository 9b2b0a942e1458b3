"""Communication cost of a placement: Σ traffic × measured path cost.

Path cost between hosts is 8 / throughput (seconds of link time per byte),
zero on one host, so the cost is link-seconds spent per second of traffic:
what every placement planner minimises and what the benchmark compares.
"""

from __future__ import annotations

import numpy as np

from services.planner.model import Adjacency, FloatArray, IntArray, Problem


def communication_cost(problem: Problem, placement: IntArray,
                       cost: FloatArray | None = None) -> float:
    c = problem.cost_matrix() if cost is None else cost
    t = problem.traffic
    if not len(t):
        return 0.0
    return float(np.dot(t.bytes_per_s, c[placement[t.u], placement[t.v]]))


def guest_cost_by_host(adj: Adjacency, cost: FloatArray, placement: IntArray,
                       guest: int) -> FloatArray:
    """The guest's own cost on every host, the others staying put (length H)."""
    nbr, w = adj.of_guest(guest)
    if nbr.size == 0:
        return np.zeros(cost.shape[0])
    return np.asarray(cost[:, placement[nbr]] @ w, dtype=np.float64)


def guest_cost_at(adj: Adjacency, cost: FloatArray, placement: IntArray, guest: int,
                  host: int) -> float:
    nbr, w = adj.of_guest(guest)
    return float(np.dot(cost[host, placement[nbr]], w)) if nbr.size else 0.0
