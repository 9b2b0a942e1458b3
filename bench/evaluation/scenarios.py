"""The evaluation's scenarios: testbed layouts, the Patterns workload, the modes.

Each scenario reproduces one experiment of the original VNET/VADAPT papers on
the namespace testbed. Specs are built here (not TOML files) so a candidate
placement of the oracle is the same testbed with guests on other hosts; the
guests keep their order, hence their MACs and IPs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.testbed.spec import TestbedSpec
from services.workloads import topologies
from services.workloads.launch import Workload
from services.workloads.web import WebSettings
from services.workloads.webconf import Catalogue

CAPACITY = 2         # guest slots per host (the proxy gets none)
MEMORY_MB = 16       # what a move copies across the underlay (a small VM)
CLUSTER_MBIT = 1000.0  # the oracle's ranking: rate assumed inside one site

# Planner arguments per mode, on top of the common ones below.
MODES: dict[str, tuple[str, ...]] = {
    "none": (),
    "overlay": ("--algorithm", "noop"),
    "migration": ("--max-links", "0"),
    "both": (),
}
ADAPTIVE = ("overlay", "migration", "both")
# The oracle's placements are static; every host pair gets its direct link.
ORACLE_PLANNER = ("--algorithm", "noop", "--share", "-1", "--max-links", "-1")


def common_planner_args() -> tuple[str, ...]:
    # share 1: every host pair that talks gets its link (the links sweep shows
    # one all-to-all pair left on the proxy costs half the throughput).
    return ("--min-interval-s", "1", "--republish-s", "2", "--min-dwell-s", "20",
            "--no-return-s", "60", "--capacity", str(CAPACITY), "--share", "1",
            "--host-capacity", "proxy=0", "--guest-memory-mb", str(MEMORY_MB))


@dataclass(frozen=True)
class Wan:
    a: str
    b: str
    rate_mbit: float
    delay_ms: float


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    claim: str                      # what the original reported
    sites: tuple[str, ...]
    hosts: tuple[tuple[str, str], ...]  # (host, site), not the proxy
    proxy_site: str
    wans: tuple[Wan, ...]
    placement: tuple[str, ...]       # start host of guest g1, g2, ...
    workload: Workload | WebWorkload
    loaded_host: str = ""            # a host whose CPU is mostly taken (cpuload.py)
    load_quota: float = 0.3
    oracle_limit: int = 2            # measure at most this many oracle candidates
    sweep_links: bool = False        # scenario 1: throughput against links added
    modes: tuple[str, ...] = ("none", "overlay", "migration", "both")
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def guests(self) -> tuple[str, ...]:
        return tuple(f"g{i + 1}" for i in range(len(self.placement)))

    @property
    def host_names(self) -> tuple[str, ...]:
        return tuple(h for h, _ in self.hosts)

    def edges(self) -> frozenset[tuple[int, int]]:
        if isinstance(self.workload, WebWorkload):
            return WEB_EDGES
        return topologies.edges(self.workload.topology, len(self.placement))

    def site_of(self, host: str) -> str:
        if host == "proxy":
            return self.proxy_site
        return dict(self.hosts)[host]

    def host_class(self) -> dict[str, str]:
        """Hosts of one site are interchangeable, but a loaded host is unlike the rest."""
        return {h: (h if h == self.loaded_host else s) for h, s in self.hosts}

    def path_mbit(self) -> dict[tuple[str, str], float]:
        """Rate between two hosts over a direct link: the WAN between their sites, if any."""
        out: dict[tuple[str, str], float] = {}
        for a, sa in self.hosts:
            for b, sb in self.hosts:
                if a < b:
                    rate = CLUSTER_MBIT
                    for w in self.wans:
                        if {w.a, w.b} == {sa, sb}:
                            rate = w.rate_mbit
                    out[(a, b)] = rate
        return out

    def network_toml(self) -> str:
        """What an operator tells the planner (``--network``): sites and WAN rates. Not
        the loaded host: its forwarder finds its cgroup's CPU quota binding."""
        lines = [f"site_rate_mbit = {CLUSTER_MBIT:g}"]
        for host, site in (("proxy", self.proxy_site), *self.hosts):
            lines += ["[[host]]", f'name = "{host}"', f'site = "{site}"']
        for w in self.wans:
            lines += ["[[wan]]", f'sites = ["{w.a}", "{w.b}"]', f"rate_mbit = {w.rate_mbit:g}",
                      f"delay_ms = {w.delay_ms:g}"]
        return "\n".join(lines) + "\n"

    def spec(self, placement: tuple[str, ...] | None = None) -> TestbedSpec:
        where = placement or self.placement
        data: dict[str, Any] = {
            "guest_mtu": 1400,
            "site": [{"name": s} for s in self.sites],
            "host": [{"name": "proxy", "site": self.proxy_site, "proxy": True}]
                    + [{"name": h, "site": s} for h, s in self.hosts],
            "guest": [{"name": g, "host": h} for g, h in zip(self.guests, where, strict=True)],
            "wan": [{"sites": [w.a, w.b], "rate_mbit": w.rate_mbit, "delay_ms": w.delay_ms,
                     "shaper": "htb"} for w in self.wans],
        }
        return TestbedSpec.from_dict(data, name=f"eval-{self.key}")


@dataclass(frozen=True)
class WebWorkload:
    """The multi-tier web site; guests g1..g5 hold the tiers in WEB_TIERS' order."""

    settings: WebSettings
    topology: str = "web"  # for the tables

    @property
    def guests(self) -> dict[str, str]:
        return {tier: f"g{i + 1}" for i, tier in enumerate(WEB_TIERS)}


WEB_TIERS = ("front", "app", "db", "img", "client")
# Who talks to whom: client-front, front-app, front-img, app-db.
WEB_EDGES = frozenset({(0, 4), (0, 1), (0, 3), (1, 2)})


def _work(topology: str, msg_kib: int, compute_s: float = 0.0,
          compute_ops: int = 0) -> Workload:
    return Workload(topology=topology, msg_bytes=msg_kib * 1024, compute_s=compute_s,
                    compute_ops=compute_ops, report_interval_s=1.0, connect_timeout_s=30.0)


REMOTE4 = (("r1", "remote"), ("r2", "remote"), ("r3", "remote"), ("r4", "remote"))

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        key="links", title="1. Fast-path links, one cluster, all-to-all",
        claim="VNET/VTTIF: adding fast-path links for an all-to-all application in one"
              " cluster raised throughput many times over the star through the proxy",
        sites=("home", "remote"), hosts=REMOTE4, proxy_site="home",
        wans=(Wan("home", "remote", 20, 5),),
        placement=("r1", "r1", "r2", "r2", "r3", "r4"),
        workload=_work("all-to-all", 16, compute_s=0.002), sweep_links=True, oracle_limit=1),
    Scenario(
        key="bus", title="2. Bus across two clusters",
        claim="VADAPT: a bus spanning two clusters gained little from fast-path links"
              " (its one crossing edge stays on the MAN link); moving guests helps",
        sites=("c1", "c2"), hosts=(("h1", "c1"), ("h2", "c1"), ("h3", "c2"), ("h4", "c2")),
        proxy_site="c1", wans=(Wan("c1", "c2", 100, 1),),
        placement=("h1", "h2", "h3", "h3"), workload=_work("bus", 256, compute_s=0.002),
        oracle_limit=1),
    Scenario(
        key="wan", title="3. WAN spread (sites of different rate and delay)",
        claim="VADAPT: guests spread over WAN sites gain from direct links and from"
              " gathering where the network is fast",
        sites=("home", "east", "west"), hosts=(("e1", "east"), ("e2", "east"), ("w1", "west")),
        proxy_site="home",
        wans=(Wan("home", "east", 50, 10), Wan("home", "west", 20, 25),
              Wan("east", "west", 100, 5)),
        placement=("e1", "e2", "w1", "w1"), workload=_work("all-to-all", 32, compute_s=0.002)),
    Scenario(
        key="ratio-comm", title="4a. Compute/communicate ratio: communication dominates",
        claim="VADAPT: when communication dominates, migration gains well beyond overlay"
              " links alone",
        sites=("a", "b"), hosts=(("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")),
        proxy_site="a", wans=(Wan("a", "b", 20, 5),),
        placement=("a1", "a1", "b1", "b2"), workload=_work("ring", 64, compute_s=0.001),
        oracle_limit=1),
    Scenario(
        key="ratio-comp", title="4b. Compute/communicate ratio: compute dominates",
        claim="VADAPT: when compute dominates, adaptation gains little",
        sites=("a", "b"), hosts=(("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")),
        proxy_site="a", wans=(Wan("a", "b", 20, 5),),
        placement=("a1", "a1", "b1", "b2"), workload=_work("ring", 4, compute_s=0.1),
        oracle_limit=0),
    Scenario(
        key="loaded", title="5. External load imbalance (a loaded host)",
        claim="VADAPT: migration moves work away from a host with competing load",
        sites=("cl",), hosts=(("h1", "cl"), ("h2", "cl"), ("h3", "cl"), ("h4", "cl")),
        proxy_site="cl", wans=(), placement=("h1", "h2", "h3", "h4"),
        workload=_work("ring", 16, compute_ops=150_000), loaded_host="h1"),
    Scenario(
        key="web", title="6. Multi-tier web site with a loaded image server",
        claim="VADAPT (TPC-W): moving the image server off a loaded host and joining"
              " the tiers by fast paths raised the site's request rate",
        sites=("cl",), hosts=(("h1", "cl"), ("h2", "cl"), ("h3", "cl"), ("h4", "cl")),
        proxy_site="cl", wans=(),
        # front app db img client
        placement=("h1", "h2", "h2", "h3", "h4"),
        workload=WebWorkload(WebSettings(
            catalogue=Catalogue(items=200, authors=50, customers=50, orders=300),
            connections=8, image_share=0.6, request_timeout_s=5.0, ready_timeout_s=60.0,
            start_load=False)),
        loaded_host="h3", load_quota=0.1),
)


def by_key(key: str) -> Scenario:
    for s in SCENARIOS:
        if s.key == key:
            return s
    raise KeyError(f"unknown scenario {key!r}: choose from {', '.join(s.key for s in SCENARIOS)}")
