"""The testbed on real namespaces: what it builds, what it measures, what it leaves."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import NetNS

from services.testbed import rundir
from services.testbed.measure import ping
from services.testbed.spec import TestbedSpec, load_spec
from services.testbed.testbed import Testbed, TestbedError, rx_cpu_mask

from .conftest import EXAMPLES, SPECS, leftovers, needs_netns

pytestmark = [pytest.mark.netns, needs_netns]

RELAY_LATE_MS = 1.0
"""Generous bound on how late the relay releases a frame (measured: 0.1-0.2 ms)."""


def link(netns: str, ifname: str) -> dict[str, Any]:
    with NetNS(netns) as ns:
        found = ns.link_lookup(ifname=ifname)
        assert found, f"no {ifname} in {netns}"
        msg = ns.get_links(found[0])[0]
        addrs = [(a.get("address"), a["prefixlen"]) for a in ns.get_addr(index=found[0])]
        return {"mac": msg.get("address"), "mtu": msg.get("mtu"),
                "up": bool(msg["flags"] & 1), "master": msg.get("master"), "addrs": addrs,
                "ipv4": [a for a in ns.get_addr(index=found[0], family=2)]}


def rps_cpus(tb: Testbed, netns: str, ifname: str) -> int:
    path = f"/sys/class/net/{ifname}/queues/rx-0/rps_cpus"
    return int(tb.run(netns, ["cat", path]).stdout.strip().replace(",", ""), 16)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_builds_example_and_leaves_nothing(path: Path) -> None:
    spec = load_spec(path)
    with Testbed(spec) as tb:
        prefix = tb.prefix
        assert rundir.PREFIX_RE.match(prefix)
        mine = {n for n in rundir.list_netns() if n.startswith(prefix + "-")}
        assert mine == set(tb.plan.namespaces)
        assert tb.run_dir.is_dir()
        assert leftovers(prefix) != []  # the checker sees a live run
        assert tb.proxy_host == spec.proxy.name
        for g in tb.guests():
            assert g == tb.guest(g.name)
            eth0 = link(g.netns, "eth0")
            assert eth0["mac"] == g.mac and eth0["mtu"] == g.mtu == 1400 and eth0["up"]
            assert eth0["addrs"] == [(g.ip, g.prefix_len)]  # no IPv6 either
            assert link(g.netns, "lo")["up"]
            host_side = link(tb.host_netns(g.host), g.host_ifname)
            assert host_side["up"] and host_side["addrs"] == [] and host_side["master"] is None
        for h in tb.hosts():
            u0 = link(tb.host_netns(h), "u0")
            assert u0["addrs"] == [(tb.underlay_ip(h), 24)] and u0["mtu"] == 1500
            # The underlay keeps a flow's order: its receive side runs on one CPU.
            for ns, ifname in ((tb.host_netns(h), "u0"),
                               (tb.site_netns(tb.site_of(h)),
                                next(p.site_ifname for p in tb.plan.hosts if p.name == h))):
                assert rps_cpus(tb, ns, ifname) == int(rx_cpu_mask().replace(",", ""), 16)
        for ns in tb.plan.namespaces:  # plain switches, where br_netfilter is loaded
            hooks = tb.run(ns, ["sh", "-c", "cat /proc/sys/net/bridge/bridge-nf-call-*"
                                " 2>/dev/null || true"]).stdout.split()
            assert set(hooks) <= {"0"}, (ns, hooks)
        lan = link(tb.host_netns(tb.proxy_host), tb.lan_ifname)
        assert lan["up"] and lan["addrs"] == []
        assert link(tb.lan_netns, "eth0")["addrs"] == [(tb.lan_ip, 16)]
        # Every host reaches every other over the underlay (first host to the rest).
        first, *rest = tb.hosts()
        for h in rest:
            r = tb.run(tb.host_netns(first), ["ping", "-c", "1", "-W", "5", tb.underlay_ip(h)])
            assert r.returncode == 0
        relay = tb.relay
    assert leftovers(prefix, [relay.pid] if relay else []) == []


def test_hosts_do_not_join_guests_by_themselves() -> None:
    """Without a forwarder, guests on different hosts (and on one host) cannot talk."""
    spec = load_spec(SPECS / "cluster.toml")
    with Testbed(spec) as tb:
        g1, g2, g3, g4 = tb.guests()
        assert g3.host == g4.host
        for src, dst in ((g1, g2), (g3, g4), (g1, g1)):
            r = tb.run(src.netns, ["ping", "-c", "1", "-W", "1", dst.ip], check=False)
            assert r.returncode == (0 if src is dst else 1), r.stdout
        for h in tb.hosts():
            forwarding = tb.run(tb.host_netns(h), ["sysctl", "-n", "net.ipv4.ip_forward"])
            assert forwarding.stdout.strip() == "0"


def test_underlay_rtt_shows_the_configured_delay() -> None:
    spec = load_spec(SPECS / "wan.toml")
    with Testbed(spec) as tb:
        first = {tb.site_of(h): h for h in reversed(tb.hosts())}
        for w in tb.plan.wans:
            rtt = ping(tb, first[w.site_a], first[w.site_b], count=5, interval_s=0.05)
            assert rtt.received == 5
            assert rtt.min_ms >= 2 * w.delay_ms, (w, rtt)
            # min, not avg: one scheduling stall on a busy machine must not fail the test.
            assert rtt.min_ms <= 2 * (w.delay_ms + RELAY_LATE_MS) + 3.0, (w, rtt)
        # Hosts of one site share a segment: no relay, no delay.
        e1, e2 = "e1", "e2"
        assert tb.site_of(e1) == tb.site_of(e2)
        assert ping(tb, e1, e2, count=3, interval_s=0.05).avg_ms < 2.0
    assert tb.relay_counters["frames_out"] > 0
    assert tb.relay_counters["frames_dropped_full"] == 0


def test_exception_inside_the_with_block_leaves_nothing() -> None:
    spec = load_spec(SPECS / "two-clusters.toml")
    tb = Testbed(spec)
    with pytest.raises(RuntimeError, match="deliberate"), tb:
        sleeper = tb.popen(tb.host_netns("h1"), ["sleep", "600"])
        # A process started behind the testbed's back, inside one of its namespaces.
        stray = subprocess.Popen(["ip", "netns", "exec", tb.host_netns("h3"), "sleep", "600"])
        relay = tb.relay
        assert relay is not None
        raise RuntimeError("deliberate")
    assert stray.wait(timeout=10) != 0
    assert relay is not None
    assert sleeper.returncode is not None
    assert leftovers(tb.prefix, [sleeper.pid, relay.pid, stray.pid]) == []


def test_failure_while_building_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(SPECS / "wan.toml")
    seen: list[str] = []

    def broken(self: Testbed) -> None:
        seen.append(self.prefix)
        assert any(n.startswith(self.prefix) for n in rundir.list_netns())
        raise OSError("no LAN today")

    monkeypatch.setattr(Testbed, "_build_lan", broken)
    with pytest.raises(OSError, match="no LAN today"):
        Testbed(spec).__enter__()
    assert seen and leftovers(seen[0]) == []


def test_tap_guest_is_configured_on_request() -> None:
    d = {"site": [{"name": "a"}],
         "host": [{"name": "proxy", "site": "a", "proxy": True}],
         "guest": [{"name": "t1", "host": "proxy", "attach": "tap", "mtu": 1300}]}
    with Testbed(TestbedSpec.from_dict(d)) as tb:
        g = tb.guest("t1")
        host_ns = tb.host_netns(g.host)
        with NetNS(g.netns) as ns:
            assert [link.get("ifname") for link in ns.get_links()] == ["lo"]
        with NetNS(host_ns) as ns:  # what the forwarder does: create the TAP, move it
            ns.link("add", ifname=g.host_ifname, kind="tuntap", mode="tap")
            idx = ns.link_lookup(ifname=g.host_ifname)[0]
            ns.link("set", index=idx, net_ns_fd=g.netns)
        tb.configure_guest_interface("t1", g.host_ifname)
        tap = link(g.netns, g.host_ifname)
        assert (tap["mac"], tap["mtu"], tap["addrs"]) == (g.mac, 1300, [(g.ip, 16)])
        with pytest.raises(KeyError, match="unknown guest 'nope'"):
            tb.guest("nope")
        with pytest.raises(KeyError, match="unknown host 'nope'"):
            tb.host_netns("nope")


def test_a_prefix_in_use_is_refused_and_left_alone() -> None:
    spec = load_spec(SPECS / "cluster.toml")
    with Testbed(spec) as tb:
        with pytest.raises(TestbedError, match=f"prefix '{tb.prefix}' is in use"):
            Testbed(spec, prefix=tb.prefix)
        assert len(leftovers(tb.prefix)) == len(tb.plan.namespaces) + 1
