"""The evaluation's pure parts: oracle enumeration, throughput series, tables, goals."""

from __future__ import annotations

import itertools
import tomllib

import pytest

from bench.evaluation import analysis, oracle, series, table
from bench.evaluation.scenarios import (
    CAPACITY,
    CLUSTER_MBIT,
    WEB_EDGES,
    WEB_TIERS,
    WebWorkload,
    by_key,
)
from services.planner.network import NetworkHints
from services.workloads import topologies


def _problem(hosts: tuple[str, ...], n: int, topology: str, cap: int = 2,
             classes: dict[str, str] | None = None) -> oracle.OracleProblem:
    return oracle.OracleProblem(hosts=hosts, capacity=dict.fromkeys(hosts, cap),
                                host_class=classes or {}, n_guests=n,
                                edges=topologies.edges(topology, n))


def test_all_to_all_on_identical_hosts_reduces_to_count_shapes() -> None:
    # 6 symmetric guests on 4 interchangeable hosts of 2 slots: (2,2,2,0) or (2,2,1,1).
    p = _problem(("r1", "r2", "r3", "r4"), 6, "all-to-all", classes=dict.fromkeys(
        ("r1", "r2", "r3", "r4"), "remote"))
    got = oracle.candidates(p)
    shapes = sorted(tuple(sorted((c.count(h) for h in p.hosts), reverse=True)) for c in got)
    assert shapes == [(2, 2, 1, 1), (2, 2, 2, 0)]


def test_distinct_hosts_keep_every_placement() -> None:
    # Hosts of no common class and a bus with only its mirror symmetry.
    p = _problem(("a", "b"), 3, "bus", cap=3)
    got = oracle.candidates(p)
    every = set(itertools.product("ab", repeat=3))
    mirrored = {tuple(reversed(c)) for c in every}
    assert len(got) == len({min(c, tuple(reversed(c))) for c in every | mirrored})
    assert all(len(c) == 3 for c in got)


def test_capacity_is_respected_and_proxyless_hosts_unused() -> None:
    p = oracle.OracleProblem(hosts=("h1", "h2", "h3"), capacity={"h1": 1, "h2": 2},
                             host_class={}, n_guests=3, edges=topologies.edges("ring", 3))
    for c in oracle.candidates(p):
        assert "h3" not in c and c.count("h1") <= 1 and c.count("h2") <= 2


def test_too_little_capacity_is_an_error() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        oracle.candidates(_problem(("h1",), 3, "ring", cap=2))


def test_ring_automorphisms_are_rotations_and_mirrors() -> None:
    assert len(oracle.automorphisms(6, topologies.edges("ring", 6))) == 12
    assert len(oracle.automorphisms(4, topologies.edges("bus", 4))) == 2


def test_ranking_prefers_fast_paths_and_avoids_loaded_hosts() -> None:
    p = _problem(("e1", "w1"), 2, "bus")
    best, total = oracle.ranked(p, {("e1", "w1"): 10.0}, 1)
    assert total == 3 and best[0][0] == best[0][1]  # both on one host: no crossing
    best, _ = oracle.ranked(p, {("e1", "w1"): 10.0}, 1, avoid=frozenset({"e1"}))
    assert best == [("w1", "w1")]


def test_rate_is_the_mean_worker_rate_in_the_window() -> None:
    points = {"g1": [(0.0, 0), (1.0, 10), (2.0, 20)], "g2": [(0.0, 0), (2.0, 30)]}
    assert series.rate(points, 0.0, 2.0) == pytest.approx((10 + 15) / 2)
    assert series.rate(points, 5.0, 6.0) == 0.0


def test_time_to_ninety_percent() -> None:
    # 10 it/s for 5 s, then 20 it/s: the 3-s rate first reaches 18 at t = 8 s.
    pts = [(float(t), 10 * min(t, 5) + 20 * max(0, t - 5)) for t in range(16)]
    line = series.timeline({"g": pts}, 0.0, 15.0)
    assert series.time_to_fraction(line, 20.0) == 8.0
    assert series.time_to_fraction(line, 100.0) is None
    assert series.time_to_fraction(line, 0.0) is None


def test_markdown_table() -> None:
    text = table.markdown(["mode", "it/s", "t90"], [["none", 4.5, None], ["both|x", 12.25, 7.0]])
    assert text.splitlines() == [
        "| mode | it/s | t90 |", "|---|---:|---:|", "| none | 4.5 | – |",
        "| both\\|x | 12.2 | 7 |"]
    with pytest.raises(ValueError):
        table.markdown(["a"], [[1, 2]])


def test_derive_and_goals() -> None:
    # 10 it/s until t = 10 s, then 28: 90% of the oracle (27 it/s) from t = 11 s.
    line = [[float(t), 10.0 if t <= 10 else 28.0] for t in range(3, 41)]
    runs: dict[str, dict[str, object]] = {
        m: {"final_it_s": f, "t90_s": 12.0, "errors": [], "migrations": [], "links_max": 1,
            "timeline": line}
        for m, f in (("none", 10.0), ("overlay", 11.0), ("migration", 30.0), ("both", 28.0))}
    rows = analysis.derive(runs, 30.0)
    assert rows["none"]["it_s"] == 10.0 and rows["migration"]["speedup"] == 3.0
    assert rows["both"]["oracle90_s"] == 11.0
    goals = analysis.goals_for("x", rows, {"links little": ("overlay", "max", 1.5)})
    assert [g.met for g in goals] == [True, True, True, True]
    assert goals[0].measured == pytest.approx(28 / 30, abs=1e-3)
    # Never reaching 90% of the oracle fails that goal, whatever the final figure says.
    runs["both"]["timeline"] = [[float(t), 20.0] for t in range(3, 41)]
    late = analysis.goals_for("x", analysis.derive(runs, 30.0), {})
    assert [g.met for g in late] == [True, False, True]


def test_the_planners_network_file_says_sites_and_wan_rates() -> None:
    wan = by_key("wan")
    hints = NetworkHints.from_dict(tomllib.loads(wan.network_toml()))
    prior = hints.prior_bps(("proxy", "e1", "e2", "w1"))
    assert prior[1, 2] == CLUSTER_MBIT * 1e6  # one site
    assert prior[1, 3] == 100e6 and prior[0, 3] == 20e6 and prior[0, 1] == 50e6
    # The loaded host is not named: its forwarder measures the binding quota.
    loaded = NetworkHints.from_dict(tomllib.loads(by_key("loaded").network_toml()))
    assert loaded.cpu == {} and loaded.slots("h1", CAPACITY) == CAPACITY


def test_the_web_scenario_names_its_tiers_and_who_talks_to_whom() -> None:
    web = by_key("web")
    assert isinstance(web.workload, WebWorkload) and web.edges() == WEB_EDGES
    tiers = web.workload.guests if isinstance(web.workload, WebWorkload) else {}
    assert tiers == {"front": "g1", "app": "g2", "db": "g3", "img": "g4", "client": "g5"}
    # The image server starts on the loaded host, which offers it no slot.
    assert web.placement[WEB_TIERS.index("img")] == web.loaded_host
    problem = oracle.OracleProblem(hosts=web.host_names,
                                   capacity=dict.fromkeys(web.host_names, CAPACITY),
                                   host_class=web.host_class(), n_guests=5, edges=web.edges())
    best, _ = oracle.ranked(problem, web.path_mbit(), 1, frozenset({web.loaded_host}))
    assert web.loaded_host not in best[0]
