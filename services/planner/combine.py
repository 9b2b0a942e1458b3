"""The combined plan: placement (with the stability policy), then the overlay
for the new placement, then forwarding rules, as one ``Plan`` message plus
each host's ``DesiredState`` under a new generation. Pure: the caller passes
the clock, the plan id and the generation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from services.bus.pb import vnet_pb2 as pb
from services.planner.cost import communication_cost
from services.planner.explain import explain
from services.planner.model import IntArray, Problem
from services.planner.overlay import CostConstraint, Overlay, select_links
from services.planner.registry import PlacementPlanner
from services.planner.routing import Pair, Routes, route
from services.planner.stability import Decision, MoveHistory, StabilitySettings, apply_policy


class PlannerFailed(RuntimeError):
    """A planner plugin returned something unusable (a bug in the plugin)."""


@dataclass(frozen=True)
class Addressing:
    """What the messages need beyond the arrays, indexed like the problem."""

    guest_macs: tuple[str, ...]  # "" when unknown: no rules for that guest
    listen_addresses: tuple[str, ...]  # per host, "ip:port"
    star_links: tuple[str, ...]  # per host, its star link's id ("" on the proxy)
    fast_links: dict[Pair, str] = field(default_factory=dict)  # existing, (x < y) -> id
    transport: pb.Transport = pb.TRANSPORT_TCP

    @classmethod
    def plain(cls, problem: Problem) -> Addressing:
        """Made-up MACs, addresses and star ids, for tests and benchmarks."""
        macs = tuple(f"02:00:{(i >> 24) & 255:02x}:{(i >> 16) & 255:02x}:"
                     f"{(i >> 8) & 255:02x}:{i & 255:02x}" for i in range(problem.n_guests))
        proxy = problem.hosts[problem.proxy]
        return cls(
            guest_macs=macs,
            listen_addresses=tuple(f"10.0.{i // 250}.{i % 250 + 1}:7800"
                                   for i in range(problem.n_hosts)),
            star_links=tuple("" if i == problem.proxy else f"star-{h}-{proxy}"
                             for i, h in enumerate(problem.hosts)),
        )


@dataclass(frozen=True)
class PlanSettings:
    constraint: CostConstraint = field(default_factory=CostConstraint)
    stability: StabilitySettings = field(default_factory=StabilitySettings)


@dataclass(frozen=True)
class PlanOutcome:
    plan: pb.Plan
    desired: tuple[pb.DesiredState, ...]
    proposed: IntArray
    placement: IntArray
    cost_before: float
    cost_after: float
    decisions: tuple[Decision, ...]
    overlay: Overlay
    routes: Routes
    link_ids: dict[Pair, str]


def link_id(problem: Problem, addressing: Addressing, x: int, y: int,
            stars: set[str] | None = None) -> str:
    """The fast-path link's id: the existing one, else "<host>-<host>" by name."""
    pair = (min(x, y), max(x, y))
    known = addressing.fast_links.get(pair)
    if known:
        return known
    a, b = sorted((problem.hosts[x], problem.hosts[y]))
    name = f"{a}-{b}"
    taken = set(addressing.star_links) if stars is None else stars
    return name if name not in taken else f"{name}-fast"


def _hop_link(problem: Problem, addressing: Addressing, fast: dict[Pair, str], a: int,
              b: int) -> str:
    """The link from host a to neighbour b on the overlay (fast path first)."""
    pair = (min(a, b), max(a, b))
    if pair in fast:
        return fast[pair]
    other = a if b == problem.proxy else b
    return addressing.star_links[other]


def _rules(problem: Problem, addressing: Addressing, placement: IntArray, routes: Routes,
           fast: dict[Pair, str]) -> dict[int, list[pb.Rule]]:
    """Per host, the rules that send each communicating pair along its path.

    A hop that the forwarder takes anyway (a non-proxy host towards the proxy,
    the proxy to the destination's host) gets no rule; a destination all of
    whose hops at a host share one link gets one rule on dst alone.
    """
    macs = addressing.guest_macs
    proxy = problem.proxy
    hops: dict[tuple[int, int], dict[int, str]] = {}  # (host, dst) -> src -> link ("" default)
    t = problem.traffic
    for u, v in zip(t.u.tolist(), t.v.tolist(), strict=True):
        a, b = int(placement[u]), int(placement[v])
        if a == b or not macs[u] or not macs[v]:
            continue
        path = routes.paths.get((min(a, b), max(a, b)))
        if path is None:
            continue
        forward = path if path[0] == a else tuple(reversed(path))
        for src, dst, p in ((u, v, forward), (v, u, tuple(reversed(forward)))):
            for here, nxt in itertools.pairwise(p):
                # The forwarder's own choice (its star link, or the proxy's way
                # to the destination's host) needs no rule; and a proxy cannot
                # name a star link in a rule (it only knows the spokes' ids).
                pair = (min(here, nxt), max(here, nxt))
                is_default = (here != proxy and nxt == proxy) or (
                    here == proxy and (nxt == p[-1] or pair not in fast))
                link = "" if is_default else _hop_link(problem, addressing, fast, here, nxt)
                hops.setdefault((here, dst), {})[src] = link
    rules: dict[int, list[pb.Rule]] = {}
    for (here, dst), by_src in sorted(hops.items()):
        links = set(by_src.values())
        if links == {""}:
            continue
        out = rules.setdefault(here, [])
        if len(links) == 1:
            out.append(pb.Rule(dst_mac=macs[dst], link_id=links.pop()))
            continue
        for src, link in sorted(by_src.items()):
            if link:
                out.append(pb.Rule(dst_mac=macs[dst], src_mac=macs[src], link_id=link))
    return rules


def make_plan(
    problem: Problem,
    addressing: Addressing,
    planner: PlacementPlanner,
    history: MoveHistory,
    *,
    now: float,
    plan_id: int,
    generation: int,
    based_on_change: int = 0,
    settings: PlanSettings = PlanSettings(),
) -> PlanOutcome:
    proposed = np.asarray(planner.place(problem), dtype=np.int64)
    # Staying put is always allowed, even where a loaded host is now over capacity.
    if proposed.shape != (problem.n_guests,) or not (
            np.array_equal(proposed, problem.current) or problem.feasible(proposed)):
        raise PlannerFailed(
            f"planner {planner.name!r} returned an infeasible placement (shape"
            f" {proposed.shape}, over capacity or moving a guest of an unreachable host)"
        )
    placement, decisions = apply_policy(problem, proposed, history, now, settings.stability)
    overlay = select_links(problem, placement, settings.constraint)
    routes = route(problem, overlay)
    stars = set(addressing.star_links)
    fast = {pair: link_id(problem, addressing, *pair, stars) for pair in overlay.links}
    rules = _rules(problem, addressing, placement, routes, fast)
    hosts = problem.hosts

    def spec(pair: Pair, towards: int) -> pb.LinkSpec:
        return pb.LinkSpec(id=fast.get(pair) or addressing.fast_links[pair],
                           peer_host=hosts[towards],
                           peer_address=addressing.listen_addresses[towards],
                           transport=addressing.transport, fast_path=True)

    incident: dict[int, list[pb.LinkSpec]] = {}
    for p in sorted(fast):
        incident.setdefault(p[0], []).append(spec(p, p[1]))
        incident.setdefault(p[1], []).append(spec(p, p[0]))
    desired = []
    for h in range(problem.n_hosts):
        links = incident.get(h, [])
        desired.append(pb.DesiredState(host=hosts[h], generation=generation, links=links,
                                       rules=rules.get(h, [])))
    plan = pb.Plan(plan_id=plan_id, planner=planner.name, based_on_change=based_on_change)
    plan.placement.extend(pb.Placement(guest_id=g, host=hosts[int(placement[i])])
                          for i, g in enumerate(problem.guests))
    plan.links_add.extend(spec(p, p[1]) for p in sorted(fast) if p not in addressing.fast_links)
    plan.links_remove.extend(spec(p, p[1]) for p in sorted(addressing.fast_links)
                             if p not in fast)
    plan.desired.extend(desired)
    thr = problem.throughput_bps
    for d in decisions:
        if d.accepted:
            rate = thr[d.from_host, d.to_host] / 8.0
            plan.migrations.append(pb.Migration(
                migration_id=f"p{plan_id}-{problem.guests[d.guest]}",
                guest_id=problem.guests[d.guest], from_host=hosts[d.from_host],
                to_host=hosts[d.to_host], est_gain=d.gain * rate, est_cost_s=d.cost_s))
    outcome = PlanOutcome(
        plan=plan, desired=tuple(desired), proposed=proposed, placement=placement,
        cost_before=communication_cost(problem, problem.current),
        cost_after=communication_cost(problem, placement), decisions=tuple(decisions),
        overlay=overlay, routes=routes, link_ids=fast,
    )
    plan.explanation = explain(problem, outcome, settings)
    return outcome
