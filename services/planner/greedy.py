"""The original VADAPT migration heuristic: a two-pass greedy.

Pass 1: communicating guest pairs by decreasing intensity, each pair whose
guests are both unplaced goes onto the free host pair with the highest
measured throughput (a host pair may be one host, whose "throughput" is
a throughput above any measured one: co-locating is best while capacity lasts). Pass 2: every
guest left (a partner already placed, or no traffic) goes, by decreasing
intensity, to the host with free capacity where its throughput to its placed
counterparts, weighted by their traffic, is highest; a guest with none goes to
the host with the most free slots. Ties go to the lowest index.
"""

from __future__ import annotations

import numpy as np

from services.planner.model import IntArray, Problem


def local_throughput(problem: Problem) -> float:
    """What two guests on one host get: above any measured host pair."""
    thr = problem.throughput_bps
    return float(thr.max()) * 10.0 if thr.size else 1.0


def greedy_placement(problem: Problem) -> IntArray:
    g = problem.n_guests
    movable = problem.movable()
    free = problem.slots().copy()
    placement = np.full(g, -1, dtype=np.int64)
    placement[~movable] = problem.current[~movable]
    thr = problem.throughput_bps.copy()
    np.fill_diagonal(thr, local_throughput(problem))

    # Host pairs x <= y among reachable hosts, by decreasing throughput.
    hosts = np.flatnonzero(problem.is_reachable())
    xs, ys = np.triu_indices(hosts.size)
    px, py = hosts[xs], hosts[ys]
    # triu_indices is in (x, y) order already: a stable sort keeps it for ties.
    order = np.argsort(-thr[px, py], kind="stable")
    px, py = px[order], py[order]

    t = problem.traffic
    pair_order = np.lexsort((t.v, t.u, -t.bytes_per_s))
    k = 0
    for i in pair_order:
        a, b = int(t.u[i]), int(t.v[i])
        if placement[a] >= 0 or placement[b] >= 0:
            continue
        while k < px.size:
            x, y = int(px[k]), int(py[k])
            if (x == y and free[x] >= 2) or (x != y and free[x] >= 1 and free[y] >= 1):
                break
            k += 1
        if k == px.size:
            break
        placement[a], placement[b] = x, y
        free[x] -= 1
        free[y] -= 1

    adj = problem.adjacency()
    strength = adj.strength()
    left = np.flatnonzero(placement < 0)
    left = left[np.lexsort((left, -strength[left]))]
    for guest in left:
        nbr, w = adj.of_guest(int(guest))
        placed = placement[nbr] >= 0
        if np.any(placed):
            score = thr[:, placement[nbr[placed]]] @ w[placed]
        else:
            score = free.astype(np.float64)
        score = np.where(free > 0, score, -np.inf)
        host = int(np.argmax(score))
        if not np.isfinite(score[host]):
            raise AssertionError("no free slot left: Problem checks total capacity")
        placement[guest] = host
        free[host] -= 1
    return placement
