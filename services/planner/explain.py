"""The plan in words: what changes, what each link carries, why each move."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.planner.combine import PlanOutcome, PlanSettings
    from services.planner.model import Problem

MAX_LINES = 200  # per section; the rest is counted, so a plan message stays small


def rate(bytes_per_s: float) -> str:
    for unit, scale in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if abs(bytes_per_s) >= scale:
            return f"{bytes_per_s / scale:.2f} {unit}"
    return f"{bytes_per_s:.0f} B/s"


def _capped(lines: list[str]) -> list[str]:
    if len(lines) <= MAX_LINES:
        return lines
    return [*lines[:MAX_LINES], f"  ... and {len(lines) - MAX_LINES} more"]


def explain(problem: Problem, outcome: PlanOutcome, settings: PlanSettings) -> str:
    plan, hosts, guests = outcome.plan, problem.hosts, problem.guests
    before, after = outcome.cost_before, outcome.cost_after
    change = f" ({(after - before) / before:+.0%})" if before > 0 else ""
    out = [
        f"plan {plan.plan_id} by {plan.planner}"
        + (f" for topology change {plan.based_on_change}" if plan.based_on_change else ""),
        f"communication cost {before:.4g} -> {after:.4g} link-s/s{change}"
        f" over {problem.n_guests} guests on {problem.n_hosts} hosts",
    ]
    made = [d for d in outcome.decisions if d.accepted]
    held = [d for d in outcome.decisions if not d.accepted]
    out.append(f"migrations: {len(made)} made, {len(held)} held back")
    thr = problem.throughput_bps
    lines = []
    for d in sorted(outcome.decisions, key=lambda d: (not d.accepted, -d.gain, d.guest)):
        link_rate = thr[d.from_host, d.to_host] / 8.0
        verdict = "move" if d.accepted else "hold"
        lines.append(
            f"  {verdict} {guests[d.guest]}: {hosts[d.from_host]} -> {hosts[d.to_host]}"
            f"  gain {d.gain:.3g} link-s/s (~{rate(d.gain * link_rate)} freed)"
            f"  cost {d.cost_s:.3g} s  [{d.reason}]"
        )
    out += _capped(lines)
    ov = outcome.overlay
    share = ov.covered / ov.total if ov.total > 0 else 1.0
    out.append(
        f"overlay: {len(ov.links)} fast-path links; {share:.0%} of {rate(ov.total)} inter-host"
        f" traffic on direct links ({settings.constraint.describe()}); the star stays"
    )
    lines = []
    added = {s.id for s in plan.links_add}
    for pair in ov.links:
        x, y = pair
        mark = "+" if outcome.link_ids[pair] in added else "="
        lines.append(
            f"  {mark} {outcome.link_ids[pair]}: carries {rate(outcome.routes.load[pair])}"
            f" ({hosts[x]}<->{hosts[y]} exchange {rate(float(ov.intensity[x, y]))})"
        )
    lines += [f"  - {s.id}: removed" for s in plan.links_remove]
    star = [(p, load) for p, load in outcome.routes.load.items()
            if p not in outcome.link_ids and load > 0]
    lines += [f"  * star {hosts[p[0]]}<->{hosts[p[1]]}: carries {rate(load)}"
              for p, load in sorted(star, key=lambda item: (-item[1], item[0]))]
    out += _capped(lines)
    n_rules = sum(len(d.rules) for d in outcome.desired)
    with_rules = sum(1 for d in outcome.desired if d.rules)
    out.append(f"rules: {n_rules} on {with_rules} hosts")
    unrouted = [f"{hosts[x]}<->{hosts[y]}" for x, y in outcome.routes.unrouted]
    out.append("unrouted host pairs (no path): " + (", ".join(unrouted[:MAX_LINES]) or "none"))
    return "\n".join(out)
