"""Stability policy: migrate only when it pays, and never back and forth.

A move's gain is how much it lowers the communication cost (link-seconds per
second, :mod:`cost`); over the horizon a placement is expected to last it
saves gain × horizon_s seconds of link time. Its cost is the time to copy the
guest's memory over the link between the two hosts (memory × 8 / throughput).
A move is made only if gain × horizon_s ≥ margin × cost. A guest moved less
than min_dwell_s ago stays, and a guest does not return to a host it left
within no_return_s: together they rule out ping-pong between two placements.
Moves are judged one by one, best first, each against the placement the
moves already accepted make; a move into a full host is judged together with
the planned move out of it that frees the slot (a swap). A guest on a host
over its capacity (a loaded host offers fewer slots: :mod:`network`) leaves
whatever it gains, the dwell and no-return rules still holding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from services.planner.model import IntArray, Problem


@dataclass(frozen=True)
class StabilitySettings:
    horizon_s: float = 60.0  # how long a placement is expected to hold
    margin: float = 2.0  # saved link time must exceed the move's time by this factor
    min_dwell_s: float = 120.0  # a guest stays at least this long after a move
    no_return_s: float = 600.0  # and does not return to a host it left for this long
    enabled: bool = True  # False: every proposed move is taken (for experiments)


@dataclass
class MoveHistory:
    """When each guest last moved and which hosts it left when (by guest id)."""

    moved_at: dict[str, float] = field(default_factory=dict)
    left: dict[str, dict[str, float]] = field(default_factory=dict)

    def record(self, guest: str, from_host: str, now: float) -> None:
        self.moved_at[guest] = now
        self.left.setdefault(guest, {})[from_host] = now


@dataclass(frozen=True)
class Decision:
    guest: int
    from_host: int
    to_host: int
    gain: float  # link-seconds per second saved
    cost_s: float  # time to move
    accepted: bool
    reason: str


def _blocked(problem: Problem, history: MoveHistory, guest: int, to_host: int, now: float,
             s: StabilitySettings) -> str:
    gid = problem.guests[guest]
    moved = history.moved_at.get(gid)
    if moved is not None and now - moved < s.min_dwell_s:
        return f"moved {now - moved:.0f}s ago (< min dwell {s.min_dwell_s:g}s)"
    left = history.left.get(gid, {}).get(problem.hosts[to_host])
    if left is not None and now - left < s.no_return_s:
        return f"left {problem.hosts[to_host]} {now - left:.0f}s ago (no return for" \
               f" {s.no_return_s:g}s)"
    return ""


def apply_policy(problem: Problem, proposed: IntArray, history: MoveHistory, now: float,
                 settings: StabilitySettings = StabilitySettings(),
                 ) -> tuple[IntArray, list[Decision]]:
    """The placement to adopt and a decision for every move proposed.

    Each proposed move is judged alone first; if that does not pay (or its
    target is full) it is judged as a bundle with the proposed moves of its
    traffic partners (co-locating a pair takes both moves), and with the move
    out of its target host that frees the slot, and so on (a swap or a
    rotation; the migrator orders them).
    """
    current = problem.current
    placement = current.copy()
    adj = problem.adjacency()
    cost = problem.cost_matrix()
    memory = problem.memory()
    thr = problem.throughput_bps
    free = problem.slots() - np.bincount(current[problem.movable()], minlength=problem.n_hosts)
    wanted = np.flatnonzero((proposed != current) & problem.movable())
    pending = {int(g) for g in wanted}
    marker = np.zeros(problem.n_guests, dtype=bool)
    pending_on: dict[int, set[int]] = {}  # host -> pending guests on it
    wanting: dict[int, set[int]] = {}  # host -> guests proposed to move there
    for g in pending:
        pending_on.setdefault(int(current[g]), set()).add(g)
        wanting.setdefault(int(proposed[g]), set()).add(g)

    def delta(bundle: list[int]) -> float:
        """Cost saved by moving the bundle to its proposed hosts."""
        if len(bundle) == 1:
            g = bundle[0]
            nbr, w = adj.of_guest(g)
            at = placement[nbr]
            return float(np.dot(w, cost[placement[g], at] - cost[int(proposed[g]), at]))
        members = np.asarray(bundle, dtype=np.int64)
        starts, ends = adj.ptr[members], adj.ptr[members + 1]
        counts = ends - starts
        if not counts.sum():
            return 0.0
        idx = np.concatenate([np.arange(a, b) for a, b in zip(starts.tolist(), ends.tolist(),
                                                               strict=True)])
        owner = np.repeat(members, counts)
        nbr, w = adj.nbr[idx], adj.w[idx]
        marker[members] = True
        inside = marker[nbr]
        marker[members] = False
        keep = ~inside | (nbr > owner)  # a pair inside the bundle counts once
        owner, nbr, w, inside = owner[keep], nbr[keep], w[keep], inside[keep]
        moved_to = np.where(inside, proposed[nbr], placement[nbr])
        return float(np.dot(w, cost[placement[owner], placement[nbr]]
                            - cost[proposed[owner], moved_to]))

    def fits(bundle: list[int]) -> bool:
        change: dict[int, int] = {}
        for g in bundle:
            here, to = int(placement[g]), int(proposed[g])
            change[here] = change.get(here, 0) + 1
            change[to] = change.get(to, 0) - 1
        return all(free[h] + c >= 0 for h, c in change.items())

    with np.errstate(divide="ignore"):
        move_s = np.where(proposed != current, memory * 8.0 / thr[current, proposed], 0.0)

    def move_cost(g: int) -> float:
        return float(move_s[g])

    def chain(g: int) -> list[int]:
        """g plus the proposed moves out of its target, and out of theirs, up to a cycle."""
        seq, home, to = [g], int(placement[g]), int(proposed[g])
        while len(seq) < 4 and to != home:
            out = sorted((int(proposed[w]) != home, w) for w in pending_on.get(to, ())
                         if w not in seq)
            if not out:
                break
            w = out[0][1]
            seq.append(w)
            to = int(proposed[w])
        return seq

    def bundles(g: int) -> Iterator[list[int]]:
        """g alone, with its moving partners, then (only if its target is full) with
        the moves out of the target."""
        nbr, _ = adj.of_guest(g)
        partners = sorted(int(n) for n in nbr.tolist() if int(n) in pending)
        yield [g]
        if partners:
            yield [g, *partners]
        if free[int(proposed[g])] > 0:
            return
        ring = chain(g)
        if len(ring) > 1:
            yield ring
            if partners:
                yield [*ring, *(p for p in partners if p not in ring)]

    def judge(bundle: list[int]) -> tuple[float, float, str]:
        """(gain, cost, why not): cheap refusals first; gain is NaN when not computed."""
        cost_s = float(move_s[bundle].sum())
        if not fits(bundle):
            return math.nan, cost_s, f"{problem.hosts[int(proposed[bundle[0]])]} is full"
        if settings.enabled:
            for x in bundle:
                why = _blocked(problem, history, x, int(proposed[x]), now, settings)
                if why:
                    return math.nan, cost_s, f"{problem.guests[x]} {why}"
        gain = delta(bundle)
        if not settings.enabled or all(free[int(placement[x])] < 0 for x in bundle):
            return gain, cost_s, ""  # the hosts it leaves are over capacity: it must go
        if gain <= 0:
            return gain, cost_s, "no gain"
        if gain * settings.horizon_s < settings.margin * cost_s:
            return gain, cost_s, (f"saves {gain * settings.horizon_s:.3g}s over"
                                  f" {settings.horizon_s:g}s < {settings.margin:g} x cost"
                                  f" {cost_s:.3g}s")
        return gain, cost_s, ""

    # Each move's gain alone, against the current placement, for all at once.
    t = problem.traffic
    pu, pv = current[t.u], current[t.v]
    alone = (np.bincount(t.u, t.bytes_per_s * (cost[pu, pv] - cost[proposed[t.u], pv]),
                         minlength=problem.n_guests)
             + np.bincount(t.v, t.bytes_per_s * (cost[pv, pu] - cost[proposed[t.v], pu]),
                           minlength=problem.n_guests))
    first = alone[wanted]
    single = dict(zip(wanted.tolist(), first.tolist(), strict=True))
    order = [int(x) for x in wanted[np.lexsort((wanted, -first))]] if wanted.size else []
    decided: dict[int, Decision] = {}
    dirty = set(order)  # judged again only when a move near them was made
    for _ in range(3):  # a later move can free the slot an earlier one needed
        todo, dirty = [g for g in order if g in dirty and g in pending], set()
        for g in todo:
            if g not in pending:
                continue
            verdict: tuple[float, float, str] = (0.0, 0.0, "")
            for bundle in bundles(g):
                verdict = judge(bundle)
                if not verdict[2]:
                    break
            gain, cost_s, why = verdict
            here = int(placement[g])
            if why:
                if math.isnan(gain):
                    gain = single[g]
                decided[g] = Decision(g, here, int(proposed[g]), gain, cost_s, False, why)
                continue
            for x in bundle:
                src, dst = int(placement[x]), int(proposed[x])
                free[src] += 1
                free[dst] -= 1
                placement[x] = dst
                pending.discard(x)
                pending_on[src].discard(x)
                reason = ("leaves a host over capacity" if free[src] <= 0 and gain <= 0
                          else "pays off") if x == g else f"moves with {problem.guests[g]}"
                decided[x] = Decision(x, src, dst, gain if x == g else 0.0,
                                      cost_s if x == g else move_cost(x), True, reason)
                nbr, _ = adj.of_guest(x)
                dirty.update(int(n) for n in nbr.tolist() if int(n) in pending)
                dirty.update(w for w in wanting.get(src, ()) if w in pending)
        if not dirty:
            break
    for d in decided.values():
        if d.accepted:
            history.record(problem.guests[d.guest], problem.hosts[d.from_host], now)
    return placement, [decided[g] for g in sorted(decided)]
