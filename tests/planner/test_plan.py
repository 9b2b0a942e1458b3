"""The combined plan, the stability policy, the registry and the bad inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.bus.pb import vnet_pb2 as pb
from services.planner import registry
from services.planner.combine import (
    Addressing,
    PlannerFailed,
    PlanOutcome,
    PlanSettings,
    make_plan,
)
from services.planner.model import InputError, IntArray, Problem
from services.planner.overlay import CostConstraint
from services.planner.registry import PlacementPlanner
from services.planner.stability import MoveHistory, StabilitySettings, apply_policy
from tests.planner.helpers import make_problem

MIB = 2**20


def two_hosts(rate: float, current: list[int] | None = None) -> Problem:
    # a on h1, b on h2, 1 Gbit/s between all; hosts of 2 slots.
    return make_problem(["p", "h1", "h2"], ["a", "b"], [(0, 1, rate)], capacity=2,
                        current=current or [1, 2])


class Fixed:
    """A planner that proposes a given placement."""

    def __init__(self, placement: list[int], name: str = "fixed") -> None:
        self.name = name
        self.placement = np.asarray(placement, dtype=np.int64)

    def place(self, problem: Problem) -> IntArray:
        return self.placement.copy()


class TestStability:
    def test_a_move_that_pays_is_made(self) -> None:
        # 100 MB/s across 1 Gbit/s costs 0.8 link-s/s; co-locating saves it all.
        # Moving 128 MiB takes 1.07 s; 0.8 x 60 s >= 2 x 1.07 s.
        pr = two_hosts(1e8)
        out, decisions = apply_policy(pr, np.array([2, 2]), MoveHistory(), 0.0)
        assert out.tolist() == [2, 2]
        (d,) = decisions
        assert d.accepted and d.gain == pytest.approx(0.8)
        assert d.cost_s == pytest.approx(128 * MIB * 8 / 1e9)

    def test_a_move_that_does_not_pay_is_held(self) -> None:
        pr = two_hosts(1e3)  # saves 8e-6 link-s/s: 4.8e-4 s over a minute
        out, decisions = apply_policy(pr, np.array([2, 2]), MoveHistory(), 0.0)
        assert out.tolist() == [1, 2]
        assert not decisions[0].accepted and "cost" in decisions[0].reason

    def test_margin_and_horizon_decide(self) -> None:
        pr = two_hosts(1e7)  # gain 0.08 link-s/s: 4.8 s over 60 s vs cost 1.07 s
        s = StabilitySettings(margin=4.0)
        assert apply_policy(pr, np.array([2, 2]), MoveHistory(), 0.0, s)[0].tolist() == [2, 2]
        s = StabilitySettings(margin=5.0)
        assert apply_policy(pr, np.array([2, 2]), MoveHistory(), 0.0, s)[0].tolist() == [1, 2]

    def test_no_ping_pong(self) -> None:
        history = MoveHistory()
        out, _ = apply_policy(two_hosts(1e8), np.array([2, 2]), history, 0.0)
        assert out.tolist() == [2, 2]  # a left h1 at t=0
        # Later b sits on h1 and a planner wants a back there, with b.
        back = two_hosts(1e8, current=[2, 1])
        out, decisions = apply_policy(back, np.array([1, 1]), history, 10.0)
        assert out.tolist() == [2, 1]
        assert "moved 10s ago" in decisions[0].reason
        out, decisions = apply_policy(back, np.array([1, 1]), history, 300.0)
        assert out.tolist() == [2, 1]
        assert "left h1" in decisions[0].reason
        out, _ = apply_policy(back, np.array([1, 1]), history, 1000.0)
        assert out.tolist() == [1, 1]

    def test_co_location_needs_both_moves_as_one_bundle(self) -> None:
        # a on h1, b on h2, both to p: neither move alone gains anything.
        pr = two_hosts(1e8)
        out, decisions = apply_policy(pr, np.array([0, 0]), MoveHistory(), 0.0)
        assert out.tolist() == [0, 0]
        assert all(d.accepted for d in decisions)

    def test_swap_between_full_hosts(self) -> None:
        pr = make_problem(["p", "h1"], list("abcd"), [(0, 1, 1e8), (2, 3, 1e8)], capacity=2,
                          current=[0, 1, 0, 1])
        out, _ = apply_policy(pr, np.array([0, 0, 1, 1]), MoveHistory(), 0.0)
        assert out.tolist() == [0, 0, 1, 1]


class TestCombined:
    def plan(self, pr: Problem, planner: PlacementPlanner, **kw: Any) -> PlanOutcome:
        return make_plan(pr, Addressing.plain(pr), planner, MoveHistory(), now=0.0,
                         plan_id=7, generation=42, based_on_change=3, **kw)

    def test_links_rules_and_desired_states(self) -> None:
        # a@h1 - b@h2 heavy; nothing may move: one fast link h1-h2 and a rule each way.
        pr = two_hosts(1e3)
        out = self.plan(pr, registry.load("noop"))
        plan = out.plan
        assert [s.id for s in plan.links_add] == ["h1-h2"]
        assert not plan.migrations
        desired = {d.host: d for d in plan.desired}
        assert set(desired) == {"p", "h1", "h2"}
        assert all(d.generation == 42 for d in plan.desired)
        macs = Addressing.plain(pr).guest_macs
        assert [(r.dst_mac, r.src_mac, r.link_id) for r in desired["h1"].rules] == [
            (macs[1], "", "h1-h2")]
        assert [(r.dst_mac, r.link_id) for r in desired["h2"].rules] == [(macs[0], "h1-h2")]
        assert [s.peer_host for s in desired["h1"].links] == ["h2"]
        assert desired["p"].rules == [] and desired["p"].links == []
        assert "h1-h2: carries 1.00 kB/s" in plan.explanation

    def test_without_fast_links_traffic_takes_the_star_with_no_rules(self) -> None:
        pr = two_hosts(1e3)
        settings = PlanSettings(constraint=CostConstraint(share=None, max_links=0))
        out = self.plan(pr, registry.load("noop"), settings=settings)
        plan = out.plan
        assert not plan.links_add
        assert all(not d.rules for d in plan.desired)
        assert "star p<->h1: carries 1.00 kB/s" in plan.explanation

    def test_migration_then_overlay_for_the_new_placement(self) -> None:
        pr = two_hosts(1e8)
        out = self.plan(pr, registry.load("partition"))
        plan = out.plan
        (m,) = plan.migrations
        assert (m.from_host, m.to_host) in {("h1", "h2"), ("h2", "h1")}
        assert m.est_cost_s == pytest.approx(128 * MIB * 8 / 1e9)
        assert m.est_gain == pytest.approx(1e8)  # all of it, at the link's 125 MB/s
        assert not plan.links_add  # co-located: nothing crosses hosts
        assert "move " in plan.explanation and "gain" in plan.explanation

    def test_existing_links_are_kept_or_removed(self) -> None:
        pr = two_hosts(1e3)
        addressing = Addressing.plain(pr)
        addressing = Addressing(addressing.guest_macs, addressing.listen_addresses,
                                addressing.star_links,
                                fast_links={(1, 2): "old-h1-h2", (0, 1): "stale"})
        out = make_plan(pr, addressing, registry.load("noop"), MoveHistory(), now=0.0,
                        plan_id=1, generation=1)
        assert not out.plan.links_add
        assert [s.id for s in out.plan.links_remove] == ["stale"]
        h1 = next(d for d in out.desired if d.host == "h1")
        assert [s.id for s in h1.links] == ["old-h1-h2"]

    def test_same_input_same_plan_bytes(self) -> None:
        from services.planner import synthetic

        pr = synthetic.problem(80, 8, seed=2)
        a = self.plan(pr, registry.load("partition")).plan
        b = self.plan(pr, registry.load("partition")).plan
        assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)

    def test_an_infeasible_plugin_answer_is_refused(self) -> None:
        pr = two_hosts(1e3)
        with pytest.raises(PlannerFailed, match="infeasible"):
            self.plan(pr, Fixed([1, 1, 1]))
        over = make_problem(["p", "h1"], list("abc"), [(0, 1, 1.0)], capacity=2,
                            current=[0, 0, 1])
        with pytest.raises(PlannerFailed):
            self.plan(over, Fixed([1, 1, 1]))


class TestRegistry:
    def test_builtins_and_unknown_names(self) -> None:
        assert {"greedy", "partition", "noop", "random", "round-robin"} <= set(registry.names())
        with pytest.raises(registry.UnknownPlanner, match=r"unknown planner 'nope'.*greedy"):
            registry.load("nope")

    def test_third_party_planner_through_an_entry_point(self,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
        from importlib import metadata

        ep = metadata.EntryPoint(name="pack", value="services.planner.example:PackPlanner",
                                 group=registry.ENTRY_POINT_GROUP)
        monkeypatch.setattr(registry, "_entry_points", lambda: {"pack": ep})
        assert "pack" in registry.names()
        planner = registry.load("pack")
        pr = make_problem(["p", "h1"], list("abc"), [(0, 1, 1e8), (1, 2, 1.0)], capacity=2,
                          current=[1, 1, 0])
        out = make_plan(pr, Addressing.plain(pr), planner, MoveHistory(), now=0.0,
                        plan_id=1, generation=1)
        assert out.plan.planner == "pack"
        assert out.proposed.tolist() == [0, 0, 1]


class TestBadProblems:
    @pytest.mark.parametrize("value", [float("nan"), -1.0, 0.0, float("inf")])
    def test_bad_throughput(self, value: float) -> None:
        thr = np.full((3, 3), 1e9)
        thr[1, 2] = value
        with pytest.raises(InputError, match="throughput"):
            make_problem(["p", "h1", "h2"], ["a"], [], throughput_bps=thr)

    def test_bad_traffic(self) -> None:
        with pytest.raises(InputError, match="negative"):
            make_problem(["p", "h1"], ["a", "b"], [(0, 1, -5.0)])
        with pytest.raises(InputError, match="out of range"):
            make_problem(["p", "h1"], ["a", "b"], [(0, 7, 5.0)])

    def test_not_enough_capacity(self) -> None:
        with pytest.raises(InputError, match="capacity"):
            make_problem(["p", "h1"], list("abcde"), [], capacity=2)

    def test_no_hosts(self) -> None:
        with pytest.raises(InputError, match="no hosts"):
            make_problem([], [], [])


def test_desired_state_is_a_valid_message() -> None:
    pr = two_hosts(1e3)
    out = make_plan(pr, Addressing.plain(pr), registry.load("noop"), MoveHistory(),
                    now=0.0, plan_id=1, generation=1)
    for d in out.desired:
        again = pb.DesiredState.FromString(d.SerializeToString())
        assert again == d
