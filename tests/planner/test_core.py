"""The world view and the service core, driven by messages and a fake clock."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.message import Message

from services.bus.envelope import BusMessage, payload_field
from services.bus.pb import vnet_pb2 as pb
from services.planner import estimate, registry
from services.planner.combine import PlanSettings, make_plan
from services.planner.inputs import InputSettings, WorldView
from services.planner.model import InputError
from services.planner.network import NetworkHints
from services.planner.service import PlannerCore, ServiceSettings
from services.planner.stability import MoveHistory, StabilitySettings
from tests.planner import world


def message(topic: str, payload: Message, seq: int = 1) -> BusMessage:
    return BusMessage(topic=topic, source="test@t", instance=1, seq=seq, ts=0.0,
                      kind=payload_field(payload), payload=payload, size=0)


def view() -> WorldView:
    v = WorldView()
    for s in world.states():
        v.on_state(s)
    return v


class TestWorldView:
    def test_problem_from_states_and_a_change(self) -> None:
        v = view()
        v.on_change(world.change())
        built = v.build()
        pr = built.problem
        assert pr.hosts == ("h1", "h2", "p") and pr.proxy == 2
        assert pr.guests == ("a", "c", "b", "d")
        assert pr.current.tolist() == [0, 0, 1, 1]
        assert sorted(pr.traffic.bytes_per_s.tolist()) == [2.5e7, 5e7]
        assert built.addressing.star_links == ("star-h1", "star-h2", "")
        assert built.addressing.guest_macs[0] == world.MACS["a"]

    def test_nodes_by_mac_and_unknown_nodes(self) -> None:
        v = view()
        change = world.change()
        change.nodes.append(world.MACS["d"].upper())
        change.nodes.append("ghost")
        change.edges.append(pb.Edge(src="a", dst=world.MACS["d"].upper(), bytes_per_s=7.0))
        change.edges.append(pb.Edge(src="a", dst="ghost", bytes_per_s=7.0))
        v.on_change(change)
        built = v.build()
        assert built.unknown_nodes == ("ghost",)
        assert 7.0 in built.problem.traffic.bytes_per_s.tolist()

    def test_matrix_input(self) -> None:
        v = view()
        v.on_matrix(pb.TrafficMatrix(nodes=["a", "b"], values=[0, 3, 1, 0]))
        assert v.build().problem.traffic.bytes_per_s.tolist() == [4.0]

    def test_down_star_link_makes_a_host_unreachable(self) -> None:
        v = view()
        v.on_state(world.state("h2", ["b", "d"], star_up=False))
        v.on_change(world.change())
        pr = v.build().problem
        assert pr.is_reachable().tolist() == [True, False, True]
        assert not pr.movable()[2:].any()

    @pytest.mark.parametrize("bad", [
        pb.TrafficMatrix(nodes=["a", "b"], values=[0, math.nan, 1, 0]),
        pb.TrafficMatrix(nodes=["a", "b"], values=[0, -1, 1, 0]),
        pb.TrafficMatrix(nodes=["a", "b"], values=[0, 1, 1]),
    ])
    def test_bad_matrix(self, bad: pb.TrafficMatrix) -> None:
        with pytest.raises(InputError):
            view().on_matrix(bad)

    def test_bad_measurements_and_changes_and_states(self) -> None:
        m = world.links("h1")
        m.links[0].rtt_ms = -1.0
        with pytest.raises(InputError, match="rtt_ms"):
            view().on_links(m)
        m.links[0].rtt_ms = 1.0
        m.links[0].loss = math.inf
        with pytest.raises(InputError, match="loss"):
            view().on_links(m)
        c = world.change()
        c.edges.append(pb.Edge(src="a", dst="zz", bytes_per_s=1.0))
        with pytest.raises(InputError, match="not in its node list"):
            view().on_change(c)
        c = world.change()
        c.edges[0].bytes_per_s = math.nan
        with pytest.raises(InputError, match="bytes_per_s"):
            view().on_change(c)
        s = world.state("h1", ["a"])
        s.guests[0].mac = "not-a-mac"
        with pytest.raises(InputError, match="MAC"):
            view().on_state(s)

    def test_empty_topology_and_no_states_make_no_problem(self) -> None:
        v = view()
        v.on_change(pb.TopologyChange(change_id=1))
        with pytest.raises(InputError, match="no traffic"):
            v.build()
        with pytest.raises(InputError, match="no forwarder state"):
            WorldView().build()
        v = WorldView()
        v.on_state(world.state("h1", ["a"]))
        with pytest.raises(InputError, match="proxy"):
            v.build()


class TestEstimate:
    def test_measured_links_and_the_path_through_the_proxy(self) -> None:
        ms = {"h1": world.links("h1", rtt_ms=1.0), "h2": world.links("h2", rtt_ms=4.0)}
        s = estimate.EstimateSettings(default_bps=1e9, window_bytes=1e5)
        thr, rtt, up = estimate.matrices(("h1", "h2", "p"), 2, ms, {}, s)
        # window/RTT: 8e5 bit / 1 ms = 800 Mbit/s; / 4 ms = 200 Mbit/s.
        assert thr[0, 2] == pytest.approx(8e8) and thr[1, 2] == pytest.approx(2e8)
        # h1-h2 has no link: through the proxy, the slower star link and the RTT sum.
        assert thr[0, 1] == pytest.approx(2e8) and rtt[0, 1] == pytest.approx(5.0)
        assert up == {(0, 2): True, (1, 2): True}

    def test_carried_rate_raises_the_estimate_and_loss_lowers_it(self) -> None:
        m = pb.LinkMeasurement(peer_host="p", up=True, rtt_ms=10.0, loss=0.01)
        s = estimate.EstimateSettings()
        mathis = 1400 * 8 / 0.01 * 1.22 / 0.1
        assert estimate.link_bps(m, 0.0, s) == pytest.approx(mathis)
        assert estimate.link_bps(m, 5e8, s) == 5e8

    def test_the_network_file_sets_each_pairs_prior(self, tmp_path: Path) -> None:
        f = tmp_path / "net.toml"
        f.write_text('site_rate_mbit = 500\n'
                     '[[host]]\nname = "p"\nsite = "home"\n'
                     '[[host]]\nname = "h1"\nsite = "far"\n'
                     '[[host]]\nname = "h2"\nsite = "far"\n'
                     '[[wan]]\nsites = ["home", "far"]\nrate_mbit = 20\ndelay_ms = 5\n')
        hosts = ("h1", "h2", "p")
        prior = NetworkHints.load(f).prior_bps(hosts)
        assert prior[0, 1] == 5e8 and prior[0, 2] == 2e7 and math.isnan(prior[0, 0])
        s = estimate.EstimateSettings(default_bps=1e9)
        # Unmeasured: the star pairs get the WAN's rate, h1-h2 the way through the proxy ...
        thr, _, _ = estimate.matrices(hosts, 2, {}, {}, s, prior)
        assert thr[0, 2] == 2e7 and thr[0, 1] == 2e7
        # ... or, when the overlay may join them, what a direct link inside the site gives.
        thr, _, _ = estimate.matrices(hosts, 2, {}, {}, s, prior, direct=True)
        assert thr[0, 1] == 5e8
        # A measured star link: the prior caps the model, a higher carried rate wins.
        ms = {"h1": world.links("h1", rtt_ms=1.0)}
        thr, _, _ = estimate.matrices(hosts, 2, ms, {("h1", "p"): 3e7}, s, prior)
        assert thr[0, 2] == 3e7

    @pytest.mark.parametrize("text", [
        '[[host]]\nname = "h1"\n',
        '[[wan]]\nsites = ["a"]\nrate_mbit = 1\n',
        '[[wan]]\nsites = ["a", "b"]\nrate_mbit = -1\n',
        'site_rate_mbit = "fast"\n',
        '[[host',
    ])
    def test_a_bad_network_file_is_refused(self, tmp_path: Path, text: str) -> None:
        f = tmp_path / "net.toml"
        f.write_text(text)
        with pytest.raises(InputError, match=r"net\.toml"):
            NetworkHints.load(f)


class TestCore:
    def core(self, settle_s: float = 0.0) -> PlannerCore:
        settings = ServiceSettings(algorithm="noop", republish_s=5.0, min_interval_s=2.0,
                                   settle_s=settle_s)
        return PlannerCore(settings, registry.load(settings.algorithm))

    def feed(self, core: PlannerCore, now: float = 0.0) -> list[tuple[str, Message]]:
        out: list[tuple[str, Message]] = []
        for i, s in enumerate(world.states()):
            out += core.on_message(message(f"state.{s.host}", s, i + 1), now)
        out += core.on_message(message("links.h1", world.links("h1")), now)
        return out

    def test_plans_on_a_change_and_republishes(self) -> None:
        core = self.core()
        assert self.feed(core) == []  # no change yet: nothing to say
        out = core.on_message(message("topology.change", world.change()), 1.0)
        topics = [t for t, _ in out]
        assert topics == ["plan", "desired.h1", "desired.h2", "desired.p"]
        plan = out[0][1]
        assert isinstance(plan, pb.Plan)
        assert plan.plan_id == 1 and plan.based_on_change == 1
        # A generation above any the forwarders hold (h2 reported 5).
        assert all(d.generation == 6 for d in plan.desired)
        assert core.tick(3.0) == []
        again = core.tick(6.0)
        assert [t for t, _ in again] == topics and core.counters["republished"] == 1

    def test_changes_closer_than_the_interval_wait(self) -> None:
        core = self.core()
        self.feed(core)
        assert core.on_message(message("topology.change", world.change(1)), 10.0)
        assert core.on_message(message("topology.change", world.change(2), 2), 11.0) == []
        assert core.next_deadline(11.0) == pytest.approx(1.0)
        out = core.tick(12.0)
        plan = out[0][1]
        assert isinstance(plan, pb.Plan)
        assert plan.plan_id == 2 and plan.based_on_change == 2

    def test_a_repeated_change_is_planned_once(self) -> None:
        core = self.core()
        self.feed(core)
        assert core.on_message(message("topology.change", world.change(1)), 1.0)
        for k in range(3):  # the inference repeats its latest change
            out = core.on_message(message("topology.change", world.change(1), 2 + k), 6.0 * k)
            assert [t for t, _ in out if t == "plan"] == ([] if k == 0 else ["plan"])
        assert core.counters["plans"] == 1 and core.counters["change_repeats"] == 3
        assert core.counters["republished"] == 2  # the plan again, not a new one
        # A new change_id is a new change; so is the same id from a restarted
        # inference (a new envelope instance).
        assert core.on_message(message("topology.change", world.change(2), 9), 20.0)
        again = BusMessage(topic="topology.change", source="test@t", instance=2, seq=1,
                           ts=0.0, kind="topology_change", payload=world.change(2), size=0)
        assert core.on_message(again, 30.0)
        assert core.counters["plans"] == 3

    def test_a_planner_started_while_traffic_is_steady_plans_the_repeat(self) -> None:
        """It missed the change; the repeat, after it settled, is planned."""
        core = self.core(settle_s=3.0)
        assert core.tick(100.0) == []  # started
        assert core.on_message(message("topology.change", world.change(7)), 100.5) == []
        self.feed(core, 101.0)  # the states come in while it settles
        assert core.next_deadline(101.0) == pytest.approx(2.0)
        out = core.tick(103.0)
        plan = out[0][1]
        assert isinstance(plan, pb.Plan) and plan.based_on_change == 7
        assert plan.links_add and plan.links_add[0].id == "h1-h2"

    def test_a_change_that_failed_is_tried_again_on_its_repeat(self) -> None:
        core = self.core()
        assert core.on_message(message("topology.change", world.change(4)), 0.0) == []
        assert core.counters["plan_failed"] == 1  # no forwarder state yet
        self.feed(core, 1.0)
        out = core.on_message(message("topology.change", world.change(4), 2), 5.0)
        assert [t for t, _ in out][:1] == ["plan"] and core.counters["plans"] == 1

    def test_bad_messages_are_counted_and_the_last_plan_stays(self) -> None:
        core = self.core()
        self.feed(core)
        core.on_message(message("topology.change", world.change()), 0.0)
        bad = pb.TrafficMatrix(nodes=["a", "b"], values=[0, math.nan, 0, 0])
        assert core.on_message(message("traffic.matrix", bad, 2), 1.0) == []
        assert core.counters["bad_traffic_matrix"] == 1
        empty = pb.TopologyChange(change_id=9)
        assert core.on_message(message("topology.change", empty, 3), 2.5) == []
        assert core.counters["plan_failed"] == 1
        assert core.last is not None and core.last.plan.plan_id == 1
        assert next(t for t, _ in core.tick(20.0)) == "plan"

    def test_traffic_far_from_what_the_last_plan_saw_is_planned_again(self) -> None:
        core = self.core()
        self.feed(core)
        assert core.on_message(message("topology.change", world.change()), 1.0)
        same = pb.TrafficMatrix(nodes=["a", "b", "c", "d"],
                                values=[0, 5e7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2.6e7, 0, 0, 0, 0])
        assert core.on_message(message("traffic.matrix", same, 2), 4.0) == []
        grown = pb.TrafficMatrix(nodes=["a", "b", "c", "d"],
                                 values=[0, 2e8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2.5e7, 0, 0, 0, 0])
        out = core.on_message(message("traffic.matrix", grown, 3), 5.0)
        assert [t for t, _ in out][:1] == ["plan"]
        assert core.counters["replans_traffic"] == 1 and core.counters["plans"] == 2
        # Measured against the traffic of the newest plan: the same again is no change.
        assert core.on_message(message("traffic.matrix", grown, 4), 8.0) == []

    def test_with_no_traffic_threshold_only_changes_are_planned(self) -> None:
        settings = ServiceSettings(algorithm="noop", min_interval_s=0.0, settle_s=0.0,
                                   replan_traffic_change=0.0)
        core = PlannerCore(settings, registry.load("noop"))
        self.feed(core)
        assert core.on_message(message("topology.change", world.change()), 1.0)
        grown = pb.TrafficMatrix(nodes=["a", "b"], values=[0, 9e9, 0, 0])
        assert core.on_message(message("traffic.matrix", grown, 2), 5.0) == []

    def moving_core(self) -> tuple[PlannerCore, pb.Plan]:
        settings = ServiceSettings(
            algorithm="partition", min_interval_s=0.0, settle_s=0.0, move_timeout_s=60.0,
            plan=PlanSettings(stability=StabilitySettings(enabled=False)))
        core = PlannerCore(settings, registry.load("partition"))
        self.feed(core)
        plan = core.on_message(message("topology.change", world.change()), 1.0)[0][1]
        assert isinstance(plan, pb.Plan) and len(plan.migrations) == 2  # a-b and c-d meet
        return core, plan

    def test_no_plan_while_its_moves_are_under_way(self) -> None:
        core, plan = self.moving_core()
        assert core.on_message(message("topology.change", world.change(2), 2), 2.0) == []
        core.tick(30.0)  # the plan is republished, no new one is made
        assert core.counters["plans"] == 1 and core.counters["republished"] >= 1
        # The states show the moves done: the change waiting is planned.
        where = {m.guest_id: m.to_host for m in plan.migrations}
        h1 = sorted([g for g in "ac" if g not in where] + [g for g, h in where.items()
                                                          if h == "h1"])
        h2 = sorted(set("abcd") - set(h1))
        core.on_message(message("state.h1", world.state("h1", h1, 7), 10), 31.0)
        out = core.on_message(message("state.h2", world.state("h2", h2, 7), 11), 31.0)
        assert [t for t, _ in out][:1] == ["plan"] and core.counters["plans"] == 2

    def test_moves_held_back_are_weighed_again_without_a_new_change(self) -> None:
        """Steady traffic brings no change: a plan that held moves is made again after
        recheck_held_s, and a move held only by the dwell rule goes once it may."""
        settings = ServiceSettings(
            algorithm="partition", min_interval_s=0.0, settle_s=0.0, republish_s=100.0,
            recheck_held_s=15.0, plan=PlanSettings(stability=StabilitySettings(
                margin=0.0, min_dwell_s=20.0)))
        core = PlannerCore(settings, registry.load("partition"))
        for guest in "abcd":  # every guest moved (from elsewhere) just now
            core.history.record(guest, "elsewhere", 0.0)
        self.feed(core)
        plan = core.on_message(message("topology.change", world.change()), 1.0)[0][1]
        assert isinstance(plan, pb.Plan) and not plan.migrations
        assert core.last is not None and core.last.decisions
        assert not any(d.accepted for d in core.last.decisions)
        assert core.next_deadline(1.0) == pytest.approx(15.0)
        assert core.tick(15.9) == []
        again = core.tick(16.0)  # still within the dwell: held again
        assert [t for t, _ in again][:1] == ["plan"] and core.counters["replans_held"] == 1
        moved = core.tick(31.0)[0][1]
        assert isinstance(moved, pb.Plan) and len(moved.migrations) == 2
        assert core.counters["replans_held"] == 2 and core.counters["plans"] == 3
        assert core.held_at is None  # nothing held: no further recheck
        assert core.tick(70.0) == [] and core.counters["plans"] == 3

    def test_held_moves_are_not_weighed_again_when_rechecks_are_off(self) -> None:
        settings = ServiceSettings(
            algorithm="partition", min_interval_s=0.0, settle_s=0.0, republish_s=100.0,
            recheck_held_s=0.0, plan=PlanSettings(stability=StabilitySettings(
                margin=0.0, min_dwell_s=20.0)))
        core = PlannerCore(settings, registry.load("partition"))
        for guest in "abcd":
            core.history.record(guest, "elsewhere", 0.0)
        self.feed(core)
        assert core.on_message(message("topology.change", world.change()), 1.0)
        assert core.tick(50.0) == [] and core.counters["plans"] == 1

    def test_a_failed_or_silent_move_holds_planning_back_no_longer(self) -> None:
        core, plan = self.moving_core()
        first = plan.migrations[0]
        failed = pb.MigrationStatus(guest_id=first.guest_id, to_host=first.to_host,
                                    phase=pb.MIGRATION_PHASE_FAILED, error="copy failed")
        core.on_message(message("migration.failed", failed, 2), 2.0)
        assert core.on_message(message("topology.change", world.change(2), 3), 3.0) == []
        core.tick(59.0)  # the other move is still within its time-out
        assert core.counters["plans"] == 1
        core.tick(61.5)
        assert core.counters["plans"] == 2 and core.counters["moves_timed_out"] == 1


def test_a_plan_too_big_for_the_bus_is_trimmed() -> None:
    from services.bus.envelope import encode
    from services.planner import synthetic
    from services.planner.combine import Addressing, make_plan
    from services.planner.stability import MoveHistory

    pr = synthetic.problem(3000, 300, seed=1)
    out = make_plan(pr, Addressing.plain(pr), registry.load("partition"), MoveHistory(),
                    now=0.0, plan_id=1, generation=1)
    assert out.plan.ByteSize() > 300_000
    core = PlannerCore(ServiceSettings(max_plan_bytes=300_000), registry.load("noop"))
    core._fit(out.plan)
    assert out.plan.ByteSize() <= 300_000
    assert not out.plan.desired and "left out" in out.plan.explanation
    assert core.counters["plan_trimmed"] == 1
    assert len(encode("plan", "planner@x", 1, 1, 0.0, out.plan)[1]) < 300_000 + 4096


def test_a_star_link_without_a_peer_name_leads_to_the_proxy() -> None:
    # The forwarder's own star LinkSpec carries the proxy's address, not its name.
    v = view()
    s = world.state("h2", ["b", "d"], star_up=False)
    s.links[0].spec.peer_host = ""
    v.on_state(s)
    v.on_change(world.change())
    m = world.links("h1", rtt_ms=2.0)
    m.links[0].peer_host = ""
    v.on_links(m)
    built = v.build(InputSettings(estimate=estimate.EstimateSettings(window_bytes=1e5)))
    assert built.addressing.star_links == ("star-h1", "star-h2", "")
    assert built.problem.is_reachable().tolist() == [True, False, True]
    assert built.problem.throughput_bps[0, 2] == pytest.approx(4e8)  # 8e5 bit / 2 ms


def test_peak_rate_of_a_nameless_star_link_raises_its_estimate() -> None:
    v = view()
    v.on_change(world.change())
    m = world.links("h1", rtt_ms=2.0)
    m.links[0].peer_host = ""
    m.links[0].tx_bps = 9e8
    v.on_links(m)
    m.links[0].tx_bps = 0.0  # later idle: the peak stays
    v.on_links(m)
    built = v.build(InputSettings(estimate=estimate.EstimateSettings(window_bytes=1e5)))
    assert built.problem.throughput_bps[0, 2] == pytest.approx(9e8 + 1e6)


def test_a_loaded_host_sheds_guests_that_gain_nothing_by_moving() -> None:
    """h1 offers one of its two slots (cpu 0.5): one of its talking pair a-c leaves for
    the free h3 though that costs traffic (the partner stays: too little traffic to pay
    for its own move); without the hint both stay."""
    hints = NetworkHints.from_dict({
        "host": [{"name": h, "site": "s"} for h in ("p", "h2", "h3")]
                + [{"name": "h1", "site": "s", "cpu": 0.5}]})
    v = view()
    v.on_state(world.state("h3", []))
    v.on_change(pb.TopologyChange(change_id=1, nodes=["a", "c"], edges=[
        pb.Edge(src="a", dst="c", weight=1.0, bytes_per_s=1e6)]))
    built = v.build(InputSettings(default_capacity=2, host_capacity={"p": 0}, network=hints,
                                  direct_links=True))
    pr = built.problem
    h1, h3 = pr.hosts.index("h1"), pr.hosts.index("h3")
    assert int(pr.capacity[h1]) == 1 and not pr.feasible(pr.current)
    out = make_plan(pr, built.addressing, registry.load("partition"), MoveHistory(), now=0.0,
                    plan_id=1, generation=1)
    moved = sorted((pr.guests[d.guest], pr.hosts[d.to_host], d.reason)
                   for d in out.decisions if d.accepted)
    assert moved in ([("a", "h3", "leaves a host over capacity")],
                     [("c", "h3", "leaves a host over capacity")])
    assert int(np.sum(out.placement == h1)) == 1 and int(np.sum(out.placement == h3)) == 1
    plain = v.build(InputSettings(default_capacity=2, host_capacity={"p": 0},
                                  direct_links=True)).problem
    again = make_plan(plain, built.addressing, registry.load("partition"), MoveHistory(),
                      now=0.0, plan_id=1, generation=1)
    assert not any(d.accepted for d in again.decisions)
    # The noop planner (overlay only) keeps the over-full host as it is, and plans links.
    kept = make_plan(pr, built.addressing, registry.load("noop"), MoveHistory(), now=0.0,
                     plan_id=1, generation=1)
    assert np.array_equal(kept.placement, pr.current) and not kept.decisions


@pytest.mark.parametrize(("quota", "throttled", "slots"), [
    (0.5, 0.9, 1),   # the limit binds: half the slots
    (0.3, 0.95, 0),  # none left
    (0.5, 0.1, 2),   # a quota that does not bind is no load
    (0.0, 0.0, 2),   # no quota
    (4.0, 1.0, 2),   # a quota of several cores binds, but the host is not short of one
])
def test_a_forwarders_binding_cpu_quota_makes_its_host_loaded(quota: float, throttled: float,
                                                              slots: int) -> None:
    v = view()
    h1 = world.state("h1", ["a", "c"], generation=3)
    h1.cpu.quota_cores, h1.cpu.throttled_share = quota, throttled
    v.on_state(h1)
    v.on_state(world.state("h3", []))
    v.on_change(world.change())
    pr = v.build(InputSettings(default_capacity=2, host_capacity={"p": 0})).problem
    assert int(pr.capacity[pr.hosts.index("h1")]) == slots
    # The operator's word and the measurement: the lesser share counts.
    hints = NetworkHints.from_dict({"host": [{"name": "h1", "site": "s", "cpu": 0.5}]})
    pr = v.build(InputSettings(default_capacity=2, host_capacity={"p": 0},
                               network=hints)).problem
    assert int(pr.capacity[pr.hosts.index("h1")]) == min(slots, 1)
