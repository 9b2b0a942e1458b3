"""The inference online: real forwarders on the testbed, real traffic, the real service.

Guests run a small UDP traffic generator (online_traffic.py) in their
namespaces, talking along the edges of a generated topology, with ARP and
background chatter (unicast and broadcast) beside it; forwarders count the
frames and publish them on the bus at 10 Hz; `vnet inference` turns them into
topology.change messages, which the tests read from the bus. One world
(online_world.py) is shared by the whole module.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from services.bus import topics
from services.bus.client import BusClient
from services.bus.pb import vnet_pb2 as pb
from services.inference import shapes
from tests.inference.online_world import (
    DAMPING_S,
    WINDOW_S,
    Edge,
    Listener,
    ReplayClient,
    World,
    build_world,
    change_edges,
    edge,
    graph_edges,
    shape_edges,
)

pytestmark = pytest.mark.netns

# Deadline for an expected report after the traffic changed: a window to
# fill, a window more when single intervals disagree with it, and room for a
# loaded machine (reports typically come 0.3-1.2 s after the change).
REPORT_S = 2 * WINDOW_S + 8.0
# How long to watch for a report that must not come (a false change, or a
# second report of one change): it would show within two windows, or within
# the damping time when it is a damped union.
QUIET_S = 2 * WINDOW_S + DAMPING_S
SHAPE_CASES = [
    ("bus/line", 16), ("ring", 12), ("2-D mesh", 16), ("3-D torus", 12), ("hypercube", 16),
    ("binary tree", 15), ("all-to-all", 12),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with build_world(tmp_path_factory.mktemp("online")) as w:
        yield w


def _diff(got: set[Edge], want: set[Edge]) -> str:
    return f"missing {sorted(want - got)}, extra {sorted(got - want)}"


async def _settle_on(world: World, listener: Listener, edges: set[Edge]) -> pb.TopologyChange:
    """Switch the traffic to `edges` (after the damping time) and take the report."""
    if not world.primed:
        # Before any application traffic the chatter is all there is, so it
        # is the first topology reported; let that report pass first.
        with contextlib.suppress(AssertionError):
            await listener.next_change(REPORT_S)
            world.last_report_t = time.monotonic()
        world.primed = True
    await world.wait_out_damping()
    world.set_edges(edges)
    change = await listener.next_change(REPORT_S)
    world.last_report_t = time.monotonic()
    got = change_edges(change)
    assert got == edges, _diff(got, edges)
    return change


async def _ensure(world: World, listener: Listener, edges: set[Edge]) -> None:
    """The traffic follows `edges` and the inference has reported them."""
    if world.edges != edges:
        await _settle_on(world, listener, edges)
    await world.wait_out_damping()


@pytest.mark.parametrize(("shape", "n"), SHAPE_CASES, ids=[f"{s}-{n}" for s, n in SHAPE_CASES])
async def test_inferred_edges_equal_generated(world: World, shape: str, n: int) -> None:
    want = shape_edges(shape, n)
    async with Listener(world.bus, world.changes_seen) as listener:
        change = await _settle_on(world, listener, want)
        counters = await listener.heartbeat()
    print(f"{shape} over {n} guests: reported shape {change.shape!r}")
    assert shape in shapes.names_in(change.shape), change.shape
    assert set(change.nodes) >= {g for e in want for g in e}
    # ARP requests and the broadcast chatter were there, and dropped as group traffic.
    assert counters.get("pairs_group", 0) > 0


async def test_ring_to_all_to_all_is_reported_once(world: World) -> None:
    ring, full = shape_edges("ring", 12), shape_edges("all-to-all", 12)
    async with Listener(world.bus, world.changes_seen) as listener:
        await _ensure(world, listener, ring)
        world.set_edges(full)
        changes = [await listener.next_change(REPORT_S)]
        world.last_report_t = time.monotonic()
        # A late second report, or a damped union, would come within QUIET_S.
        changes += await listener.watch(QUIET_S)
    assert [change_edges(c) for c in changes] == [full], [c.shape for c in changes]
    assert changes[0].shape == "all-to-all"


async def test_fast_flip_is_damped(world: World) -> None:
    """Flipping slower than the window but faster than damping_s: the union, held."""
    a = shape_edges("ring", 12)
    b = graph_edges(shapes.generate("2-D mesh", 12))
    flips, hold_s = 8, 1.5 * WINDOW_S
    assert WINDOW_S < hold_s < DAMPING_S
    async with Listener(world.bus, world.changes_seen) as listener:
        await _ensure(world, listener, a)
        during: list[pb.TopologyChange] = []
        current = a
        for _ in range(flips):
            current = b if current is a else a
            world.set_edges(current)
            during += await listener.watch(hold_s)
        # The traffic stays put: once damping_s passed, what it is gets reported.
        after = [await listener.next_change(REPORT_S + DAMPING_S)]
        world.last_report_t = time.monotonic()
        after += await listener.watch(QUIET_S)
    print(f"{flips} flips: {len(during)} reports while flipping, {len(after)} after")
    assert 1 <= len(during) <= 3, [len(c.edges) for c in during]
    assert change_edges(during[-1]) == a | b, _diff(change_edges(during[-1]), a | b)
    assert [change_edges(c) for c in after] == [current]


async def test_forwarder_restart_creates_no_change(world: World) -> None:
    ring = shape_edges("ring", 12)
    async with Listener(world.bus, world.changes_seen) as listener:
        await _ensure(world, listener, ring)
        before = (await listener.heartbeat()).get("forwarder_restarts", 0)
        world.stop_forwarder("h2", signal.SIGKILL)
        world.start_forwarder("h2")
        await listener.counter_above("forwarder_restarts", before, 20)
        changes = await listener.watch(QUIET_S)
        counters = listener.counters
    print("restart:", {k: v for k, v in counters.items() if "restart" in k or "lost" in k
                       or "silent" in k or "recovered" in k})
    assert changes == [], [c.shape for c in changes]


async def test_rogue_counts_are_dropped(world: World) -> None:
    ring = shape_edges("ring", 12)
    tb = world.tb
    # A huge count between two guests that have no edge: if it got in, it
    # would be the strongest edge by far and prune the ring away.
    huge = pb.PairCount(src_mac=tb.guest("g1").mac, dst_mac=tb.guest("g7").mac,
                        frames=10**6, bytes=10**9, total_frames=10**7, total_bytes=10**10)
    async with Listener(world.bus, world.changes_seen) as listener:
        await _ensure(world, listener, ring)
        spy = BusClient(world.bus, "spy", "online")
        rogue = BusClient(world.bus, "rogue", "online")
        replay: ReplayClient | None = None
        try:
            spy.subscribe(topics.join(topics.FRAMES, "h1"))
            await spy.ready()
            await rogue.ready()
            latest = await _next_counts(spy)
            base = await listener.heartbeat()
            index, topic = latest.payload_index, topics.join(topics.FRAMES, "h1")
            for bad in (
                pb.FrameCounts(host="h1", interval_index=index + 1, interval_s=-1,
                               pairs=[huge]),
                pb.FrameCounts(host="h1", interval_index=index + 1, interval_s=math.nan,
                               pairs=[huge]),
                pb.FrameCounts(host="", interval_index=index + 1, interval_s=0.1, pairs=[huge]),
            ):
                rogue.publish(topic, bad)
            # Out of order: the forwarder's own instance, intervals already seen.
            replay = ReplayClient(world.bus, latest.instance, "replay")
            await replay.ready()
            for old in (index, index - 5):
                replay.publish(topic, pb.FrameCounts(host="h1", interval_index=old,
                                                     interval_s=0.1, pairs=[huge]))
            await listener.counter_above("counts_malformed",
                                         base.get("counts_malformed", 0) + 2, 10)
            await listener.counter_above("counts_out_of_order",
                                         base.get("counts_out_of_order", 0) + 1, 10)
            changes = await listener.watch(QUIET_S)
        finally:
            for client in (spy, rogue, replay):
                if client is not None:
                    client.close()
    assert changes == [], [c.shape for c in changes]


class _Counts(NamedTuple):
    instance: int  # the forwarder run's envelope instance
    payload_index: int  # its latest interval_index


async def _next_counts(spy: BusClient, timeout: float = 10.0) -> _Counts:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        for msg in await spy.recv_batch(left):
            if isinstance(msg.payload, pb.FrameCounts) and msg.payload.interval_index > 10:
                return _Counts(msg.instance, msg.payload.interval_index)
    raise AssertionError(f"no frames.h1 from h1's forwarder within {timeout}s")



async def test_counts_under_a_new_instance_create_no_change(world: World) -> None:
    """One stray FrameCounts for h1 from another instance (empty, a valid interval)."""
    ring = shape_edges("ring", 12)
    async with Listener(world.bus, world.changes_seen) as listener:
        await _ensure(world, listener, ring)
        base = await listener.heartbeat()
        rogue = BusClient(world.bus, "rogue", "stray")
        try:
            await rogue.ready()
            rogue.publish(topics.join(topics.FRAMES, "h1"),
                          pb.FrameCounts(host="h1", interval_index=1, interval_s=0.1))
            counters = await listener.counter_above(
                "forwarder_restarts", base.get("forwarder_restarts", 0) + 1, 10)
            changes = await listener.watch(QUIET_S)
        finally:
            rogue.close()
    print({k: (base.get(k, 0), v) for k, v in counters.items() if base.get(k, 0) != v})
    assert changes == [], [(c.shape, sorted(change_edges(c))) for c in changes]


async def test_count_from_the_future_does_not_silence_a_forwarder(world: World) -> None:
    # Three rings, one inside each host: h1's edges are counted by h1 only.
    hosts = {h: [f"g{i}" for i in range(1, 13) if (i - 1) % 3 == k]
             for k, h in enumerate(("h1", "h2", "h3"))}
    rings = {edge(ring[k], ring[(k + 1) % len(ring)])
             for ring in hosts.values() for k in range(len(ring))}
    async with Listener(world.bus, world.changes_seen) as listener:
        await _ensure(world, listener, rings)
        spy = BusClient(world.bus, "spy", "online")
        replay: ReplayClient | None = None
        try:
            spy.subscribe(topics.join(topics.FRAMES, "h1"))
            await spy.ready()
            latest = await _next_counts(spy)
            base = (await listener.heartbeat()).get("counts_out_of_order", 0)
            replay = ReplayClient(world.bus, latest.instance, "future")
            await replay.ready()
            replay.publish(topics.join(topics.FRAMES, "h1"), pb.FrameCounts(
                host="h1", interval_index=latest.payload_index + 1_000_000, interval_s=0.1))
            changes = await listener.watch(QUIET_S)
            dropped = listener.counters.get("counts_out_of_order", 0) - base
        finally:
            for client in (spy, replay):
                if client is not None:
                    client.close()
            # Heal h1 for whatever runs next: a new forwarder run, a new instance.
            world.stop_forwarder("h1")
            world.start_forwarder("h1")
            world.last_report_t = time.monotonic() + QUIET_S
    assert dropped <= 1, f"{dropped} intervals of h1's real forwarder dropped as out of order"
    assert changes == [], [(c.shape, len(c.edges)) for c in changes]
