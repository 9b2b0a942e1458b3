"""Forwarding paths over the overlay, weighted by the load already assigned.

Host-pair flows are routed one at a time in decreasing intensity (ties: lower
indices first). An edge's weight for a flow of f bytes/s is the time to carry
what it already carries plus f, 8·(load + f)/throughput, so later flows avoid
links that earlier ones filled and traffic spreads. With the resilient star
every two reachable hosts are at most two hops apart, so each flow is solved
exactly over the paths of one or two hops, vectorised over the hosts linked
to both ends (O(degree) numpy work per flow, no per-pair graph search); only when no such path
exists (a star link down) does a Dijkstra over the actual overlay links run.
A flow with no path at all is reported as unrouted, never guessed. Traffic is
routed symmetrically: the reverse direction takes the reverse path.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

import numpy as np

from services.planner.model import BoolArray, FloatArray, IntArray, Problem
from services.planner.overlay import Overlay

Pair = tuple[int, int]


@dataclass(frozen=True)
class Routes:
    paths: dict[Pair, tuple[int, ...]]  # (x, y), x < y -> hosts from x to y
    load: dict[Pair, float]  # overlay edge (x < y) -> bytes/s assigned
    unrouted: tuple[Pair, ...]


def overlay_edges(problem: Problem, links: tuple[Pair, ...]) -> BoolArray:
    """Star edges (every reachable host to the proxy) plus the fast-path links."""
    h = problem.n_hosts
    reach = problem.is_reachable()
    edges = np.zeros((h, h), dtype=bool)
    if reach[problem.proxy]:
        edges[problem.proxy, reach] = True
        edges[reach, problem.proxy] = True
    for x, y in links:
        if reach[x] and reach[y]:
            edges[x, y] = edges[y, x] = True
    np.fill_diagonal(edges, False)
    return edges


def _dijkstra(edges: BoolArray, thr: FloatArray, load: FloatArray, f: float, src: int,
              dst: int) -> tuple[int, ...] | None:
    dist = {src: 0.0}
    prev: dict[int, int] = {}
    heap = [(0.0, src)]
    done: set[int] = set()
    while heap:
        d, node = heapq.heappop(heap)
        if node in done:
            continue
        done.add(node)
        if node == dst:
            path = [dst]
            while path[-1] != src:
                path.append(prev[path[-1]])
            return tuple(reversed(path))
        for nxt in (int(x) for x in np.flatnonzero(edges[node])):
            nd = d + 8.0 * (load[node, nxt] + f) / thr[node, nxt]
            if nd < dist.get(nxt, np.inf):
                dist[nxt] = nd
                prev[nxt] = node
                heapq.heappush(heap, (nd, nxt))
    return None


def route(problem: Problem, overlay: Overlay, placement: IntArray | None = None) -> Routes:
    del placement  # the overlay's intensity already reflects it
    edges = overlay_edges(problem, overlay.links)
    thr = problem.throughput_bps
    load = np.zeros_like(thr)
    xs, ys = np.nonzero(overlay.intensity > 0)
    vals = overlay.intensity[xs, ys]
    paths: dict[Pair, tuple[int, ...]] = {}
    unrouted: list[Pair] = []
    neighbours = [set(np.flatnonzero(row).tolist()) for row in edges]
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in np.lexsort((ys, xs, -vals)):
            x, y, f = int(xs[i]), int(ys[i]), float(vals[i])
            # Two-hop paths go through a neighbour of both ends (sorted: ties -> lowest).
            middle = np.array(sorted(neighbours[x] & neighbours[y]), dtype=np.int64)
            via = (8.0 * (load[x, middle] + f) / thr[x, middle]
                   + 8.0 * (load[middle, y] + f) / thr[middle, y])
            k = int(np.argmin(via)) if middle.size else -1
            best_via = float(via[k]) if k >= 0 else np.inf
            direct = 8.0 * (load[x, y] + f) / thr[x, y] if edges[x, y] else np.inf
            path: tuple[int, ...] | None
            if np.isfinite(direct) and direct <= best_via:
                path = (x, y)
            elif np.isfinite(best_via):
                path = (x, int(middle[k]), y)
            else:
                path = _dijkstra(edges, thr, load, f, x, y)
            if path is None:
                unrouted.append((x, y))
                continue
            paths[(x, y)] = path
            for a, b in itertools.pairwise(path):
                load[a, b] += f
                load[b, a] += f
    ex, ey = np.nonzero(np.triu(edges))
    loads = {(int(a), int(b)): float(load[a, b]) for a, b in zip(ex, ey, strict=True)}
    return Routes(paths=paths, load=loads, unrouted=tuple(unrouted))
