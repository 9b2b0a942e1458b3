"""Desired state → operations: what to change so the forwarder matches the plan.

Pure. Takes what runs (generation, managed links, rules) and a DesiredState
and returns the operations, or refuses the whole message (wrong host, an
older generation). Individual bad entries — a rule naming an unknown link or
guest, a bad MAC, a link to a host outside the membership — are rejected one
by one with a reason, and the rest is applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.bus.pb import vnet_pb2 as pb
from services.forwarder.core import CompiledRule
from services.forwarder.ethernet import mac_from_str

_TRANSPORTS = (pb.TRANSPORT_TCP, pb.TRANSPORT_UDP, pb.TRANSPORT_TLS)


class Refused(ValueError):
    """The whole desired state is refused; reason names the counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Operations:
    generation: int
    add_links: tuple[pb.LinkSpec, ...] = ()
    remove_links: tuple[str, ...] = ()
    replace_links: tuple[pb.LinkSpec, ...] = ()  # same id, different spec: reconnect
    rules: tuple[CompiledRule, ...] = ()
    rule_messages: tuple[pb.Rule, ...] = ()
    rules_changed: bool = False
    rejected: tuple[tuple[str, str], ...] = field(default=())  # (counter, detail)

    @property
    def empty(self) -> bool:
        return not (self.add_links or self.remove_links or self.replace_links
                    or self.rules_changed)


def compile_rule(rule: pb.Rule) -> CompiledRule:
    """A rule's MACs parsed; raise ValueError naming a bad value."""
    action = rule.WhichOneof("action")
    if action is None:
        raise ValueError(f"rule dst={rule.dst_mac!r} src={rule.src_mac!r} has no action")
    dst = mac_from_str(rule.dst_mac) if rule.dst_mac else b""
    src = mac_from_str(rule.src_mac) if rule.src_mac else b""
    if not dst and not src:
        raise ValueError("rule with neither dst nor src MAC: the default rule is fixed")
    return CompiledRule(dst=dst, src=src, link_id=rule.link_id, guest_id=rule.guest_id,
                        drop=action == "drop")


def plan(
    *,
    host: str,
    generation: int,
    links: dict[str, pb.LinkSpec],
    rules: list[pb.Rule],
    desired: pb.DesiredState,
    guests: set[str],
    fixed_links: set[str],
    members: frozenset[str],
) -> Operations:
    """The operations that take (links, rules) to desired; raise Refused."""
    if desired.host != host:
        raise Refused("desired_wrong_host", f"desired state for {desired.host!r}, this is {host!r}")
    if desired.generation < generation:
        raise Refused(
            "desired_stale",
            f"generation {desired.generation} is older than the {generation} held",
        )
    rejected: list[tuple[str, str]] = []
    wanted: dict[str, pb.LinkSpec] = {}
    for spec in desired.links:
        if not spec.id or spec.id in wanted or spec.id in fixed_links:
            rejected.append(("link_rejected", f"link id {spec.id!r} is empty or duplicate"))
        elif spec.transport not in _TRANSPORTS:
            rejected.append(("link_rejected", f"link {spec.id!r} has no transport"))
        elif members and spec.peer_host not in members:
            rejected.append(
                ("link_rejected", f"link {spec.id!r} names host {spec.peer_host!r} not a member")
            )
        elif spec.peer_host == host:
            rejected.append(("link_rejected", f"link {spec.id!r} points at this host"))
        else:
            wanted[spec.id] = spec
    known_links = set(wanted) | fixed_links
    compiled: list[CompiledRule] = []
    kept: list[pb.Rule] = []
    seen: set[tuple[bytes, bytes]] = set()
    for rule in desired.rules:
        try:
            c = compile_rule(rule)
        except ValueError as exc:
            rejected.append(("rule_rejected", str(exc)))
            continue
        if c.link_id and c.link_id not in known_links:
            rejected.append(("rule_unknown_link", f"rule names unknown link {c.link_id!r}"))
            continue
        if c.guest_id and c.guest_id not in guests:
            rejected.append(("rule_unknown_guest", f"rule names unknown guest {c.guest_id!r}"))
            continue
        if (c.dst, c.src) in seen:
            rejected.append(
                ("rule_rejected", f"two rules for dst={rule.dst_mac!r} src={rule.src_mac!r}")
            )
            continue
        seen.add((c.dst, c.src))
        compiled.append(c)
        kept.append(rule)
    add = tuple(s for i, s in sorted(wanted.items()) if i not in links)
    remove = tuple(sorted(i for i in links if i not in wanted))
    replace = tuple(
        s for i, s in sorted(wanted.items())
        if i in links and links[i].SerializeToString(deterministic=True)
        != s.SerializeToString(deterministic=True)
    )
    old = [r.SerializeToString(deterministic=True) for r in rules]
    new = [r.SerializeToString(deterministic=True) for r in kept]
    return Operations(
        generation=desired.generation,
        add_links=add,
        remove_links=remove,
        replace_links=replace,
        rules=tuple(compiled),
        rule_messages=tuple(kept),
        rules_changed=old != new,
        rejected=tuple(rejected),
    )
