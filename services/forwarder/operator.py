"""Operator commands over the bus: `vnet links|rules|guests HOST`, `vnet apply FILE`.

They read what forwarders publish on state.<host> (level-triggered, at least
once a second) and publish desired.<host>; nothing talks to a forwarder
directly.
"""

from __future__ import annotations

import time
from typing import TextIO

from services.bus import topics
from services.bus.client import BusClient
from services.bus.pb import vnet_pb2 as pb
from services.forwarder import overlay


async def read_states(client: BusClient, hosts: list[str], timeout: float
                      ) -> dict[str, pb.ForwarderState]:
    """The next state.<host> of each host (those that answered within timeout)."""
    for h in hosts:
        client.subscribe(topics.join(topics.STATE, h))
    await client.ready()
    found: dict[str, pb.ForwarderState] = {}
    deadline = time.monotonic() + timeout
    while len(found) < len(hosts) and (left := deadline - time.monotonic()) > 0:
        for msg in await client.recv_batch(timeout=left):
            if isinstance(msg.payload, pb.ForwarderState) and msg.payload.host in hosts \
                    and msg.topic == topics.join(topics.STATE, msg.payload.host):
                found[msg.payload.host] = msg.payload
    return found


def format_state(st: pb.ForwarderState, what: str) -> list[str]:
    if what == "links":
        lines = [f"{'LINK':<16} {'PEER':<10} {'ADDRESS':<22} {'TRANSPORT':<9} {'KIND':<9}"
                 f" {'UP':<4} RECONNECTS"]
        for ls in st.links:
            s = ls.spec
            lines.append(f"{s.id:<16} {s.peer_host:<10} {s.peer_address:<22}"
                         f" {pb.Transport.Name(s.transport)[10:]:<9}"
                         f" {'fast' if s.fast_path else 'star':<9} {'yes' if ls.up else 'no':<4}"
                         f" {ls.reconnects}")
        return lines
    if what == "rules":
        return [f"generation {st.generation}"] + [overlay.rule_text(r) for r in st.rules] + [
            "default -> " + ("no route (proxy)" if st.is_proxy else "the proxy (star link)")]
    lines = [f"{'GUEST':<12} {'MAC':<18} {'IP':<16} {'KIND':<12} ATTACHMENT"]
    for g in st.guests:
        kind = pb.AttachmentKind.Name(g.kind)[11:].lower()
        lines.append(f"{g.id:<12} {g.mac:<18} {g.ip:<16} {kind:<12} {g.attachment}")
    return lines


async def show(client: BusClient, host: str, what: str, timeout: float, out: TextIO) -> int:
    states = await read_states(client, [host], timeout)
    if host not in states:
        print(f"no state.{host} within {timeout}s: is forwarder {host!r} running on this bus?",
              file=out)
        return 1
    print("\n".join(format_state(states[host], what)), file=out)
    return 0


async def apply(client: BusClient, path: str, timeout: float, dry_run: bool, out: TextIO) -> int:
    desc = overlay.load(path)
    hosts = sorted(desc.hosts)
    states = await read_states(client, hosts, timeout)
    for h in hosts:
        if h not in states:
            print(f"! {h}: no state within {timeout}s (forwarder not running?)", file=out)
    for problem in overlay.placement_problems(desc, states):
        print(f"! {problem}", file=out)
    generation = desc.generation or 1 + max((s.generation for s in states.values()), default=0)
    changed = False
    for h in hosts:
        lines = overlay.diff(states.get(h), desc.desired[h])
        changed |= bool(lines)
        print(f"{h}:" + ("" if lines else " no change"), file=out)
        for line in lines:
            print(f"  {line}", file=out)
    if dry_run:
        return 0
    for h in hosts:
        want = pb.DesiredState()
        want.CopyFrom(desc.desired[h])
        want.generation = generation
        client.publish(topics.join(topics.DESIRED, h), want)
    # Confirm: every running forwarder reports the new generation.
    running = [h for h in hosts if h in states]
    deadline = time.monotonic() + timeout
    done: set[str] = set()
    while set(running) - done and (left := deadline - time.monotonic()) > 0:
        for msg in await client.recv_batch(timeout=left):
            if isinstance(msg.payload, pb.ForwarderState) and \
                    msg.payload.generation >= generation:
                done.add(msg.payload.host)
    missing = sorted(set(running) - done)
    if missing:
        print(f"generation {generation} not confirmed by {', '.join(missing)}", file=out)
        return 1
    print(f"applied generation {generation} on {', '.join(running)}", file=out)
    return 0
