"""Batched ingest (what the service does) against one message at a time, on the wire.

The service hands the core everything received since the last update in one
batch; these tests feed the same encoded-and-decoded FrameCounts to one core
message by message and to another in batches, through losses, a forwarder
restart, a migration, forwarders counting faster than the updates run (a
pair in several intervals of one batch), state messages inside a batch and
bad counts, and want the same topology changes, counters, errors and
matrices.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import pytest

from services.bus import envelope
from services.bus.envelope import BusMessage
from services.bus.pb import vnet_pb2 as pb
from services.inference import shapes, simulate, window
from services.inference.core import InferenceCore, Outgoing
from services.inference.detect import prune
from services.inference.params import InferenceParams
from services.inference.simulate import Simulation

PARAMS = InferenceParams(update_rate_hz=10.0, smoothing_window_s=1.0, damping_s=2.0,
                         matrix_period_s=0.5, change_republish_s=1.0)


@dataclass
class Feed:
    """The wire: (arrival time, encoded message) in order, and the update times."""

    sim: Simulation
    wire: list[tuple[float, tuple[str, bytes]]] = field(default_factory=list)
    seq: dict[str, int] = field(default_factory=dict)

    def send(self, t: float, host: str, payload: pb.FrameCounts | pb.ForwarderState) -> None:
        topic = ("frames." if isinstance(payload, pb.FrameCounts) else "state.") + host
        self.seq[topic] = self.seq.get(topic, 0) + 1
        instance = self.sim.hosts[host].instance
        self.wire.append((t, envelope.encode(topic, f"forwarder@{host}", instance,
                                             self.seq[topic], t, payload)))

    def states(self, t: float) -> None:
        for host in self.sim.hosts:
            self.send(t, host, self.sim.state(host))

    def run(self, start: float, end: float, lose: frozenset[tuple[str, int]] = frozenset(),
            ) -> None:
        for t, host in self.sim.events(start, end):
            counts = self.sim.interval(host)
            if (host, counts.interval_index) not in lose:
                self.send(t, host, counts)


def _decoded(frame: tuple[str, bytes]) -> BusMessage:
    msg = envelope.decode(frame)
    assert isinstance(msg, BusMessage), msg
    return msg


def _replay(feed: Feed, end: float, batched: bool
            ) -> tuple[InferenceCore, list[tuple[float, Outgoing]], list[str]]:
    core = InferenceCore(PARAMS)
    out: list[tuple[float, Outgoing]] = []
    errors: list[str] = []
    pending: list[tuple[BusMessage, float]] = []
    wire = iter(feed.wire)
    nxt = next(wire, None)
    for k in range(int(end * PARAMS.update_rate_hz) + 1):
        tick = k * PARAMS.update_period_s
        while nxt is not None and nxt[0] <= tick:
            msg = _decoded(nxt[1])
            if batched:
                pending.append((msg, nxt[0]))
            else:
                errors += core.handle(msg, nxt[0])
            nxt = next(wire, None)
        if pending:
            errors += [e for _, e in core.handle_batch(pending)]
            pending = []
        out += [(tick, o) for o in core.tick(tick)]
    return core, out, errors


def _scenario() -> Feed:
    n = 24
    sim = Simulation(n, n_hosts=4, interval_s=0.05, seed=31)  # 20 Hz: 2 intervals a batch
    sim.set_topology(shapes.generate("ring", n))
    feed = Feed(sim)
    feed.states(0.0)
    feed.run(0.0, 2.0)
    # h2 loses three intervals: recovered from the totals.
    feed.run(2.0, 3.0, lose=frozenset(("h2", i) for i in range(45, 48)))
    # h1 restarts and its first intervals after the restart are lost.
    sim.restart("h1")
    feed.run(3.0, 4.0, lose=frozenset(("h1", i) for i in (1, 2, 3)))
    # Bad counts between good ones: no interval length, out of order, bad pairs.
    feed.send(4.01, "h3", pb.FrameCounts(host="h3", interval_index=999))
    replay = sim.interval("h3")
    feed.send(4.02, "h3", replay)
    feed.send(4.03, "h3", replay)  # the same interval again
    bad = sim.interval("h4")
    bad.pairs.add(src_mac="not-a-mac", dst_mac=sim.macs[1], bytes=5, total_bytes=5)
    bad.pairs.add(src_mac=sim.macs[3], dst_mac=sim.macs[2], bytes=50, total_bytes=7)
    feed.send(4.04, "h4", bad)
    columns = sim.interval("h2")
    columns.columns.src.append(len(columns.columns.macs) + 3)
    feed.send(4.05, "h2", columns)
    # g1 migrates h1 -> h2 (states inside a batch), then the traffic turns all-to-all.
    feed.run(4.05, 5.0)
    sim.migrate(0, "h2")
    feed.states(5.0)
    feed.run(5.0, 6.0)
    sim.set_topology(shapes.generate("all-to-all", n))
    feed.run(6.0, 10.0)
    return feed


def test_batched_ingest_equals_one_message_at_a_time() -> None:
    feed = _scenario()
    one, out_one, errors_one = _replay(feed, 10.0, batched=False)
    many, out_many, errors_many = _replay(feed, 10.0, batched=True)

    counters = one.counters.snapshot()
    for name in ("intervals_lost", "bytes_recovered", "forwarder_restarts",
                 "counts_malformed", "counts_out_of_order", "pairs_malformed",
                 "changes_republished"):
        assert counters.get(name, 0) > 0, name
    assert many.counters.snapshot() == counters
    assert errors_many == errors_one

    def topology(out: list[tuple[float, Outgoing]]) -> list[tuple[float, int, str, list[str]]]:
        return [(t, o.payload.change_id, o.payload.shape,
                 [f"{e.src}-{e.dst}" for e in o.payload.edges])
                for t, o in out if isinstance(o.payload, pb.TopologyChange)]

    assert topology(out_many) == topology(out_one)
    assert {c for _, c, _, _ in topology(out_one)} == {1, 2}
    assert [t for t, o in out_many if isinstance(o.payload, pb.TrafficMatrix)] == [
        t for t, o in out_one if isinstance(o.payload, pb.TrafficMatrix)]
    for (_, a), (_, b) in zip(
            [x for x in out_one if isinstance(x[1].payload, pb.TrafficMatrix)],
            [x for x in out_many if isinstance(x[1].payload, pb.TrafficMatrix)], strict=True):
        assert isinstance(a.payload, pb.TrafficMatrix)
        assert isinstance(b.payload, pb.TrafficMatrix)
        assert list(a.payload.nodes) == list(b.payload.nodes)
        np.testing.assert_allclose(b.payload.values, a.payload.values, rtol=1e-9, atol=1e-6)
    n = len(one.guests)
    np.testing.assert_allclose(many.acc.matrix(n), one.acc.matrix(n), rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("batch", [True, False])
def test_simulated_runs_agree_both_ways(batch: bool) -> None:
    """simulate.run's two modes give the same reports (the tests and benches use both)."""
    sim = Simulation(16, n_hosts=4, interval_s=0.25, seed=32)
    sim.set_topology(shapes.generate("hypercube", 16))
    core = InferenceCore(InferenceParams(update_rate_hz=4.0, smoothing_window_s=1.0))
    out = simulate.run(core, sim, 0.0, 6.0, batch=batch)
    first = next(o.payload for _, o in out if isinstance(o.payload, pb.TopologyChange))
    assert isinstance(first, pb.TopologyChange)
    assert "hypercube" in first.shape


def test_the_latest_change_is_repeated_with_its_change_id() -> None:
    sim = Simulation(8, n_hosts=2, seed=33)
    sim.set_topology(shapes.generate("ring", 8))
    params = InferenceParams(update_rate_hz=4.0, smoothing_window_s=1.0, change_republish_s=2.0)
    core = InferenceCore(params)
    out = [(t, o.payload) for t, o in simulate.run(core, sim, 0.0, 12.0)
           if isinstance(o.payload, pb.TopologyChange)]
    assert {c.change_id for _, c in out} == {1}
    times = [t for t, _ in out]
    assert len(times) >= 4
    assert all(b - a == pytest.approx(2.0) for a, b in itertools.pairwise(times))
    assert core.counters["changes_republished"] == len(out) - 1
    assert all(c is out[0][1] for _, c in out)  # the very same message again

    quiet = InferenceCore(InferenceParams(update_rate_hz=4.0, smoothing_window_s=1.0,
                                          change_republish_s=0.0))
    sim2 = Simulation(8, n_hosts=2, seed=33)
    sim2.set_topology(shapes.generate("ring", 8))
    once = [o for _, o in simulate.run(quiet, sim2, 0.0, 12.0)
            if isinstance(o.payload, pb.TopologyChange)]
    assert len(once) == 1


def test_traffic_that_stops_leaves_nothing_even_at_multi_gigabit_rates() -> None:
    """Adding and subtracting 1e9 B/s leaves rounding residue of about 1e-6 B/s, above
    a fixed threshold: once all traffic stopped, it alone made up a topology of
    phantom edges. A pair whose last record left the window is exactly zero."""
    sim = Simulation(12, n_hosts=3, interval_s=0.1, rate_bps=1.25e9, noise=0.3, seed=34,
                     extras=False, chatter=0.0)
    sim.set_topology(shapes.generate("ring", 12))
    # A window of 7 intervals: rates are bytes / 0.7 s, not whole numbers.
    core = InferenceCore(InferenceParams(update_rate_hz=10.0, smoothing_window_s=0.7,
                                         damping_s=1.0))
    seen = [o.payload for _, o in simulate.run(core, sim, 0.0, 5.0)
            if isinstance(o.payload, pb.TopologyChange)]
    assert seen and seen[-1].shape == "ring"
    sim.set_topology(nx.empty_graph(12))
    last = [o.payload for _, o in simulate.run(core, sim, 5.0, 12.0)
            if isinstance(o.payload, pb.TopologyChange)]
    keys, rates = core.acc.undirected(12)
    assert len(keys) == 0, rates
    assert last and not last[-1].edges  # reported as no traffic, not as residue


def test_endless_restarts_reset_the_pair_memory_instead_of_growing_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(window, "_EPOCHS_KEPT", 8)
    sim = Simulation(8, n_hosts=2, interval_s=0.25, seed=35)
    sim.set_topology(shapes.generate("ring", 8))
    core = InferenceCore(InferenceParams(update_rate_hz=4.0, smoothing_window_s=1.0))
    seen: set[int] = set()
    first = [o.payload for _, o in simulate.run(core, sim, 0.0, 4.0)
             if isinstance(o.payload, pb.TopologyChange)]
    seen |= {c.change_id for c in first}
    for k in range(12):  # h1 comes back as a new instance every second
        sim.restart("h1")
        out = simulate.run(core, sim, 4.0 + k, 5.0 + k,
                           lose=lambda host, i: host == "h1" and i == 2)
        assert not [o for _, o in out if isinstance(o.payload, pb.TopologyChange)
                    and o.payload.change_id not in seen]
    assert core.counters["forwarder_restarts"] == 12
    assert core.counters["pair_memory_reset"] >= 1
    assert core.counters["bytes_recovered"] > 0


def test_an_index_far_ahead_after_a_silence_is_taken_without_overflow() -> None:
    sim = Simulation(8, n_hosts=2, interval_s=0.25, seed=36)
    sim.set_topology(shapes.generate("ring", 8))
    core = InferenceCore(InferenceParams(update_rate_hz=4.0, smoothing_window_s=1.0))
    simulate.run(core, sim, 0.0, 4.0)
    core.tick(10.0)  # both forwarders silent: their windows are retired
    assert core.counters["forwarders_silent"] == 2
    sim.hosts["h1"].interval_index += 1 << 45  # nothing to compare it with: taken
    simulate.run(core, sim, 10.0, 14.0)
    assert core.counters["counts_implausible"] == 0
    assert core.counters["intervals"] > 0
    assert len(prune(*core.acc.undirected(8), 0.1).keys) == 8  # the ring, counted again
