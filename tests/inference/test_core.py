"""The inference core offline: simulated forwarders, a fake clock, real messages."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from services.bus.pb import vnet_pb2 as pb
from services.inference import shapes, simulate
from services.inference.core import InferenceCore, Outgoing, topology_from_matrix
from services.inference.guests import natural_key
from services.inference.params import InferenceParams
from services.inference.simulate import Simulation

FAST = InferenceParams(
    update_rate_hz=4.0, smoothing_window_s=2.0, damping_s=6.0, matrix_period_s=0.5
)


def changes(
    out: list[tuple[float, Outgoing]], seen: set[int] | None = None
) -> list[tuple[float, pb.TopologyChange]]:
    """The topology changes in out, each change_id once: a repeat is the periodic
    republish, not a change. Share one seen set over several runs of one core."""
    seen = set() if seen is None else seen
    found = []
    for t, o in out:
        if isinstance(o.payload, pb.TopologyChange) and o.payload.change_id not in seen:
            seen.add(o.payload.change_id)
            found.append((t, o.payload))
    return found


def matrices(out: list[tuple[float, Outgoing]]) -> list[tuple[float, pb.TrafficMatrix]]:
    return [(t, o.payload) for t, o in out if isinstance(o.payload, pb.TrafficMatrix)]


def edge_set(change: pb.TopologyChange) -> set[tuple[str, str]]:
    return {(e.src, e.dst) for e in change.edges}


def expected(sim: Simulation, g: nx.Graph) -> set[tuple[str, str]]:
    out = set()
    for a, b in g.edges:
        x, y = sorted((sim.ids[a], sim.ids[b]), key=natural_key)
        out.add((x, y))
    return out


def pair_rate(matrix: pb.TrafficMatrix, src: str, dst: str) -> float:
    nodes = list(matrix.nodes)
    return float(matrix.values[nodes.index(src) * len(nodes) + nodes.index(dst)])


CASES = [
    ("bus/line", 8), ("bus/line", 16), ("ring", 8), ("ring", 13), ("ring", 16),
    ("2-D mesh", 9), ("2-D mesh", 16), ("3-D torus", 12), ("3-D torus", 16),
    ("hypercube", 8), ("hypercube", 16), ("binary tree", 10), ("binary tree", 15),
    ("all-to-all", 8), ("all-to-all", 16), ("star", 12), ("tiers", 16),
]


@pytest.mark.parametrize(("shape", "n"), CASES)
def test_inferred_edges_equal_generated_and_shape_named(shape: str, n: int) -> None:
    g = shapes.generate(shape, n)
    sim = Simulation(n, n_hosts=4, seed=n)
    sim.set_topology(g)
    core = InferenceCore(FAST)
    out = simulate.run(core, sim, 0.0, 12.0)
    found = changes(out)
    assert len(found) == 1, [c.shape for _, c in found]
    change = found[0][1]
    assert edge_set(change) == expected(sim, g)
    assert shape in shapes.names_in(change.shape), change.shape
    # ARP, multicast, the outsider MAC and double counting were all there, and dropped.
    counters = core.counters.snapshot()
    for name in ("pairs_group", "pairs_unknown_mac", "pairs_not_local"):
        assert counters[name] > 0, name
    # The periodic matrix prunes to the same topology.
    last = matrices(out)[-1][1]
    assert edge_set(topology_from_matrix(last)) == expected(sim, g)


def test_ring_to_all_to_all_reported_exactly_once() -> None:
    n = 12
    sim = Simulation(n, seed=3)
    sim.set_topology(shapes.generate("ring", n))
    core = InferenceCore(FAST)
    seen: set[int] = set()
    before = changes(simulate.run(core, sim, 0.0, 20.0), seen)
    assert [c.shape for _, c in before] == ["ring"]
    sim.set_topology(shapes.generate("all-to-all", n))
    after = changes(simulate.run(core, sim, 20.0, 60.0), seen)
    assert len(after) == 1, [(t, c.shape, len(c.edges)) for t, c in after]
    t, change = after[0]
    assert change.shape == "all-to-all"
    assert edge_set(change) == expected(sim, shapes.generate("all-to-all", n))
    # Reported within the smoothing window plus two updates of the switch.
    assert t - 20.0 <= FAST.smoothing_window_s + 2 * FAST.update_period_s


def test_a_fast_flip_is_damped_to_the_union_then_settles() -> None:
    n = 16
    ring, mesh = shapes.generate("ring", n), shapes.generate("2-D mesh", n)
    sim = Simulation(n, seed=4)
    sim.set_topology(ring)
    core = InferenceCore(FAST)
    seen: set[int] = set()
    assert len(changes(simulate.run(core, sim, 0.0, 20.0), seen)) == 1
    reported = []
    t = 20.0
    for k in range(20):  # flip every 1.5 s, faster than damping_s = 6 s
        sim.set_topology(mesh if k % 2 == 0 else ring)
        reported += changes(simulate.run(core, sim, t, t + 1.5), seen)
        t += 1.5
    # 20 real changes; at most the first change and the union are reported.
    assert 1 <= len(reported) <= 2, [(x, c.shape) for x, c in reported]
    union = expected(sim, ring) | expected(sim, mesh)
    assert edge_set(reported[-1][1]) == union
    # The application settles on the ring: reported once more, after damping.
    sim.set_topology(ring)
    settled = changes(simulate.run(core, sim, t, t + 20.0), seen)
    assert len(settled) == 1
    assert settled[0][1].shape == "ring"
    assert settled[0][0] - t >= FAST.damping_s


def test_slow_changes_are_each_reported() -> None:
    n = 16
    ring, mesh = shapes.generate("ring", n), shapes.generate("2-D mesh", n)
    sim = Simulation(n, seed=5)
    core = InferenceCore(FAST)
    shapes_seen = []
    ids: set[int] = set()
    for k in range(6):  # each topology holds 12 s, longer than damping_s
        sim.set_topology(ring if k % 2 == 0 else mesh)
        out = simulate.run(core, sim, 12.0 * k, 12.0 * (k + 1))
        shapes_seen += [c.shape for _, c in changes(out, ids)]
    assert shapes_seen == ["ring", "2-D mesh 4x4"] * 3


def test_forwarder_restart_and_lost_intervals_neither_spike_nor_zero() -> None:
    n = 12
    sim = Simulation(n, n_hosts=3, seed=6, noise=0.0)
    sim.set_topology(shapes.generate("ring", n))
    core = InferenceCore(FAST)
    warm = simulate.run(core, sim, 0.0, 10.0)
    seen: set[int] = set()
    assert len(changes(warm, seen)) == 1
    steady = pair_rate(matrices(warm)[-1][1], "g1", "g2")  # g1 lives on h1
    assert steady == pytest.approx(sim.rate_bps, rel=0.05)
    # h1 restarts (new instance, counters from zero) and the bus loses three
    # of its intervals after the restart.
    sim.restart("h1")
    out = simulate.run(core, sim, 10.0, 30.0, lose=lambda host, i: host == "h1" and 2 <= i <= 4)
    assert changes(out, seen) == []
    for _, m in matrices(out):
        assert pair_rate(m, "g1", "g2") == pytest.approx(sim.rate_bps, rel=0.05)
    counters = core.counters.snapshot()
    assert counters["forwarder_restarts"] == 1
    assert counters["intervals_lost"] == 3
    assert counters["bytes_recovered"] > 0


def test_lost_intervals_without_recovery_would_dip() -> None:
    """The recovery above is what keeps the rate: a loss with no totals dips it."""
    core = InferenceCore(InferenceParams(smoothing_window_s=4.0))
    sim = Simulation(2, n_hosts=1, noise=0.0, extras=False, chatter=0.0, columns=False)
    sim.set_topology(shapes.generate("bus/line", 2))
    simulate.run(core, sim, 0.0, 6.0)
    counts = sim.interval("h1")
    sim.interval("h1")
    sim.interval("h1")
    counts = sim.interval("h1")  # two lost in between
    for p in counts.pairs:  # forget the totals: recovery has nothing to work with
        p.total_bytes = p.total_bytes - 2 * int(sim.rate_bps)
    core.handle(sim.message("h1", counts), 7.0)
    rate = core.acc.matrix(2)[0, 1]
    assert rate == pytest.approx(sim.rate_bps * 2 / 4)


def test_migrated_guest_stays_the_same_node_without_false_changes() -> None:
    n = 12
    sim = Simulation(n, n_hosts=3, seed=7, noise=0.0)
    g = shapes.generate("ring", n)
    sim.set_topology(g)
    core = InferenceCore(InferenceParams(update_rate_hz=4.0, smoothing_window_s=4.0))
    seen: set[int] = set()
    assert len(changes(simulate.run(core, sim, 0.0, 10.0), seen)) == 1
    nodes_before = len(core.guests)
    sim.migrate(0, "h2")  # g1: h1 -> h2; run() republishes every host's state
    out = simulate.run(core, sim, 10.0, 30.0)
    assert changes(out, seen) == []
    assert len(core.guests) == nodes_before
    assert core.guests.local_to("h2") >= {0}
    assert 0 not in core.guests.local_to("h1")
    # The old host's intervals slide out as the new host's come in, one
    # interval (1/4 of the window) apart at worst: no zero, no doubling.
    for _, m in matrices(out):
        assert pair_rate(m, "g1", "g2") == pytest.approx(sim.rate_bps, rel=0.26)
    assert edge_set(core.latest or pb.TopologyChange()) == expected(sim, g)


def test_chatter_under_the_pruning_line_changes_nothing() -> None:
    n = 16
    sim = Simulation(n, seed=8, chatter=0.05, chatter_pairs=4 * n)
    sim.set_topology(shapes.generate("hypercube", n))
    core = InferenceCore(FAST)
    out = simulate.run(core, sim, 0.0, 60.0)
    assert len(changes(out)) == 1


def test_malformed_and_out_of_order_counts_are_dropped_with_a_counter() -> None:
    n = 8
    sim = Simulation(n, n_hosts=2, seed=9)
    g = shapes.generate("ring", n)
    sim.set_topology(g)
    core = InferenceCore(FAST)
    seen: set[int] = set()
    changes(simulate.run(core, sim, 0.0, 10.0), seen)
    good = sim.interval("h1")
    assert core.handle(sim.message("h1", good), 10.1) == []
    # The same interval again, and an older one: out of order.
    assert core.handle(sim.message("h1", good), 10.2)
    older = pb.FrameCounts()
    older.CopyFrom(good)
    older.interval_index -= 3
    assert core.handle(sim.message("h1", older), 10.3)
    # No interval length, a negative one, no host.
    for bad in (
        pb.FrameCounts(host="h1", interval_index=999),
        pb.FrameCounts(host="h1", interval_index=999, interval_s=-1.0),
        pb.FrameCounts(interval_index=999, interval_s=1.0),
    ):
        assert core.handle(sim.message("h1", bad), 10.4)
    # Pairs that are no MACs, or claim more bytes than their total.
    nxt = sim.interval("h1")
    nxt.pairs.add(src_mac="not-a-mac", dst_mac=sim.macs[1], bytes=5, total_bytes=5)
    nxt.pairs.add(src_mac=sim.macs[0], dst_mac=sim.macs[2], bytes=50, total_bytes=7)
    assert len(core.handle(sim.message("h1", nxt), 10.5)) == 2
    # A state with a guest that has a broadcast MAC.
    state = sim.state("h1")
    state.guests.add(id="bad", mac="ff:ff:ff:ff:ff:ff")
    assert core.handle(sim.message("h1", state), 10.6)
    counters = core.counters.snapshot()
    assert counters["counts_out_of_order"] == 2
    assert counters["counts_malformed"] == 3
    assert counters["pairs_malformed"] == 2
    assert counters["state_bad_guest"] == 1
    # And the service carried on: the topology is unchanged and still reported.
    out = simulate.run(core, sim, 11.0, 20.0)
    assert changes(out, seen) == []
    assert edge_set(core.latest or pb.TopologyChange()) == expected(sim, g)


def test_a_silent_forwarder_ages_out() -> None:
    sim = Simulation(8, n_hosts=2, seed=10)
    sim.set_topology(shapes.generate("ring", 8))
    core = InferenceCore(FAST)
    simulate.run(core, sim, 0.0, 10.0)
    assert core.acc.matrix(8).sum() > 0
    core.tick(10.0 + FAST.smoothing_window_s + 3.0)
    assert core.counters["forwarders_silent"] == 2
    assert np.count_nonzero(core.acc.matrix(8)) == 0


def test_output_is_deterministic() -> None:
    def once() -> bytes:
        sim = Simulation(16, seed=11)
        sim.set_topology(shapes.generate("3-D torus", 16))
        found = changes(simulate.run(InferenceCore(FAST), sim, 0.0, 8.0))
        return found[-1][1].SerializeToString()

    a, b = pb.TopologyChange(), pb.TopologyChange()
    a.ParseFromString(once())
    b.ParseFromString(once())
    assert [(e.src, e.dst) for e in a.edges] == [(e.src, e.dst) for e in b.edges]
    assert a.shape == b.shape == "3-D torus 2x2x4 = hypercube 4-D"


def test_random_garbage_never_raises() -> None:
    """A small fuzz of FrameCounts fields: everything is dropped or taken, nothing raises."""
    rng = np.random.default_rng(5)
    sim = Simulation(8, n_hosts=2, seed=12)
    sim.set_topology(shapes.generate("ring", 8))
    core = InferenceCore(FAST)
    simulate.run(core, sim, 0.0, 5.0)
    macs = [*sim.macs, "ff:ff:ff:ff:ff:ff", "", "zz", "02:00:00:00:00:01:00", "01:00:5E:00:00:01"]
    for k in range(300):
        fc = pb.FrameCounts(
            host=str(rng.choice(["h1", "h2", "h9", ""])),
            interval_index=[0, 1, 2**40, 2**63, k][int(rng.integers(5))],
            interval_s=float(rng.choice([1.0, 0.0, -1.0, 1e-9, 1e9, float("nan"), 0.05])),
        )
        for _ in range(int(rng.integers(0, 6))):
            b = int(rng.integers(0, 2**62))
            fc.pairs.add(src_mac=str(rng.choice(macs)), dst_mac=str(rng.choice(macs)),
                         bytes=b, total_bytes=[b, 0, 2**64 - 1][int(rng.integers(3))])
        core.handle(sim.message("h1", fc), 5.0 + k * 0.01)
        core.tick(5.0 + k * 0.01)
    assert core.counters["counts_malformed"] > 0
    assert core.counters["pairs_malformed"] > 0


@pytest.mark.parametrize("columns", [True, False])
def test_both_count_forms_give_the_same_topology(columns: bool) -> None:
    n = 12
    g = shapes.generate("ring", n)
    sim = Simulation(n, n_hosts=3, seed=21, columns=columns)
    sim.set_topology(g)
    assert bool(sim.interval("h1").columns.src) is columns
    core = InferenceCore(FAST)
    found = changes(simulate.run(core, sim, 0.0, 10.0))
    assert len(found) == 1 and edge_set(found[0][1]) == expected(sim, g)


def test_pair_columns_that_disagree_are_dropped_with_a_counter() -> None:
    n = 8
    sim = Simulation(n, n_hosts=2, seed=22)
    sim.set_topology(shapes.generate("ring", n))
    core = InferenceCore(FAST)
    simulate.run(core, sim, 0.0, 8.0)
    bad = sim.interval("h1")
    bad.columns.src.append(len(bad.columns.macs) + 5)  # index past the MAC table
    errors = core.handle(sim.message("h1", bad), 8.1)
    assert any("pair columns disagree" in e for e in errors)
    assert core.counters["pairs_malformed"] == len(bad.columns.src)


def test_a_count_from_the_far_future_is_dropped_not_taken_as_loss() -> None:
    n = 8
    sim = Simulation(n, n_hosts=2, seed=23)
    g = shapes.generate("ring", n)
    sim.set_topology(g)
    core = InferenceCore(FAST)
    seen: set[int] = set()
    changes(simulate.run(core, sim, 0.0, 8.0), seen)
    forged = sim.interval("h1")
    forged.interval_index += 1_000_000
    errors = core.handle(sim.message("h1", forged), 8.05)
    assert any("plausible" in e for e in errors)
    assert core.counters["counts_implausible"] == 1
    # The real forwarder's next intervals still count and nothing changes.
    out = simulate.run(core, sim, 8.1, 16.0)
    assert core.counters["counts_out_of_order"] == 0
    assert changes(out, seen) == []
    assert edge_set(core.latest or pb.TopologyChange()) == expected(sim, g)
