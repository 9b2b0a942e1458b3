"""The oracle's candidates: every placement of guests onto hosts under capacity, up to symmetry.

Two placements that differ only by swapping interchangeable hosts (same site,
same load) or by an automorphism of the application's topology (a ring turned
or mirrored, any permutation for all-to-all) run alike, so only one of each
class is measured. Pure: no testbed, no clock.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

Placement = tuple[str, ...]  # host of each guest, by guest index


@dataclass(frozen=True)
class OracleProblem:
    hosts: tuple[str, ...]
    capacity: Mapping[str, int]       # guest slots per host (missing: none)
    host_class: Mapping[str, str]     # interchangeable hosts share a class
    n_guests: int
    edges: frozenset[tuple[int, int]]  # the topology over guest indices

    def check(self) -> None:
        if sum(self.capacity.get(h, 0) for h in self.hosts) < self.n_guests:
            raise ValueError(f"{self.n_guests} guests do not fit the hosts' capacity"
                             f" {dict(self.capacity)}")
        bad = [e for e in self.edges if not 0 <= e[0] < e[1] < self.n_guests]
        if bad:
            raise ValueError(f"edges {bad} are not (low, high) pairs of guest indices")


def automorphisms(n: int, edges: frozenset[tuple[int, int]]) -> list[tuple[int, ...]]:
    """Guest permutations that map the topology onto itself (identity first)."""
    if len(edges) == n * (n - 1) // 2:  # complete: every permutation (cheap to say so)
        return list(itertools.permutations(range(n)))
    adj = {i: {b if a == i else a for a, b in edges if i in (a, b)} for i in range(n)}
    out: list[tuple[int, ...]] = []

    def extend(perm: list[int], used: set[int]) -> None:
        i = len(perm)
        if i == n:
            out.append(tuple(perm))
            return
        for cand in range(n):
            if cand in used or len(adj[cand]) != len(adj[i]):
                continue
            if all((perm[j] in adj[cand]) == (j in adj[i]) for j in range(i)):
                perm.append(cand)
                used.add(cand)
                extend(perm, used)
                perm.pop()
                used.discard(cand)

    extend([], set())
    return out


def host_permutations(hosts: Sequence[str], host_class: Mapping[str, str]
                      ) -> list[dict[str, str]]:
    """Every renaming of hosts that swaps only hosts of one class."""
    classes: dict[str, list[str]] = {}
    for h in hosts:
        classes.setdefault(host_class.get(h, h), []).append(h)
    groups = list(classes.values())
    out: list[dict[str, str]] = []
    for images in itertools.product(*(itertools.permutations(g) for g in groups)):
        out.append({h: img for g, im in zip(groups, images, strict=True)
                    for h, img in zip(g, im, strict=True)})
    return out


def _feasible(problem: OracleProblem) -> Iterator[Placement]:
    hosts = [h for h in problem.hosts if problem.capacity.get(h, 0) > 0]
    for combo in itertools.product(hosts, repeat=problem.n_guests):
        used: dict[str, int] = {}
        for h in combo:
            used[h] = used.get(h, 0) + 1
        if all(used[h] <= problem.capacity[h] for h in used):
            yield combo


def candidates(problem: OracleProblem) -> list[Placement]:
    """One placement per symmetry class, each the class's least tuple, sorted."""
    problem.check()
    autos = automorphisms(problem.n_guests, problem.edges)
    renames = host_permutations(problem.hosts, problem.host_class)
    seen: set[Placement] = set()
    out: list[Placement] = []
    for placement in _feasible(problem):
        if placement in seen:
            continue
        orbit = {tuple(rename[placement[p[i]]] for i in range(problem.n_guests))
                 for p in autos for rename in renames}
        seen |= orbit
        out.append(min(orbit))
    return sorted(out)


def crossing_cost(placement: Placement, edges: frozenset[tuple[int, int]],
                  path_mbit: Mapping[tuple[str, str], float]) -> float:
    """A rough iteration cost: Σ over topology edges of 1 / the rate between their hosts.

    Only ranks candidates, so the few measured are the likeliest best; an
    edge inside one host costs nothing, an unknown host pair costs as 1 Mbit/s.
    """
    cost = 0.0
    for a, b in sorted(edges):
        ha, hb = placement[a], placement[b]
        if ha != hb:
            rate = path_mbit.get((ha, hb), path_mbit.get((hb, ha), 1.0))
            cost += 1.0 / rate
    return cost


def ranked(problem: OracleProblem, path_mbit: Mapping[tuple[str, str], float],
           limit: int, avoid: frozenset[str] = frozenset()) -> tuple[list[Placement], int]:
    """The limit cheapest candidates, and how many candidates there were.

    Cheapest: fewest guests on hosts to avoid (a loaded host), then crossing_cost,
    then fewer crossings, then by name.
    """
    every = candidates(problem)

    def key(p: Placement) -> tuple[int, float, int, Placement]:
        crossings = sum(p[a] != p[b] for a, b in problem.edges)
        return (sum(h in avoid for h in p),
                round(crossing_cost(p, problem.edges, path_mbit), 9), crossings, p)

    return sorted(every, key=key)[:limit], len(every)
