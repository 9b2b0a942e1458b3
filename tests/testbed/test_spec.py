"""SPEC parsing and the layout plan: pure, no namespaces."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from services.testbed.plan import make_plan, tc_commands
from services.testbed.spec import SpecError, TestbedSpec, load_spec

from .conftest import EXAMPLES, SPECS


def minimal(**top: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "site": [{"name": "a"}],
        "host": [{"name": "proxy", "site": "a", "proxy": True}, {"name": "h1", "site": "a"}],
        "guest": [{"name": "g1", "host": "h1"}, {"name": "g2", "host": "proxy"}],
    }
    d.update(top)
    return d


def test_examples_are_the_three_environments_and_the_demo() -> None:
    assert [p.name for p in EXAMPLES] == ["cluster.toml", "demo.toml", "two-clusters.toml",
                                          "wan.toml"]
    demo = load_spec(SPECS / "demo.toml")
    assert len(demo.sites) == 2 and demo.wans[0].rate_mbit == 20
    cluster = load_spec(SPECS / "cluster.toml")
    assert len(cluster.sites) == 1 and cluster.wans == ()
    two = load_spec(SPECS / "two-clusters.toml")
    assert len(two.sites) == 2 and len(two.wans) == 1 and two.wans[0].rate_mbit == 100
    wan = load_spec(SPECS / "wan.toml")
    assert len(wan.sites) == 3 and len({(w.delay_ms, w.rate_mbit) for w in wan.wans}) == 3
    for spec in (cluster, two, wan):
        assert spec.proxy.name == "proxy"
        assert spec.guest_mtu == 1400


def test_defaults_are_stable_and_distinct() -> None:
    a = TestbedSpec.from_dict(minimal())
    b = TestbedSpec.from_dict(minimal())
    assert a.guests == b.guests
    g1, g2 = a.guests
    assert (g1.mac, g1.ip, g1.prefix_len, g1.mtu) == ("02:76:6e:00:00:01", "10.10.0.1", 16, 1400)
    assert (g2.mac, g2.ip) == ("02:76:6e:00:00:02", "10.10.0.2")
    assert a.lan_ip == "10.10.255.254"


def test_explicit_guest_values() -> None:
    d = minimal()
    d["guest"][0].update(mac="02:AA:00:00:00:09", ip="10.10.7.7", mtu=1300, attach="tap")
    g = TestbedSpec.from_dict(d).guests[0]
    assert (g.mac, g.ip, g.mtu, g.attach) == ("02:aa:00:00:00:09", "10.10.7.7", 1300, "tap")


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(colour="red"), "unknown key 'colour'"),
    (lambda d: d["guest"][0].update(hots="h1"), "unknown key 'hots'"),
    (lambda d: d["host"][0].update(rate=3), "unknown key 'rate'"),
    (lambda d: d["guest"][0].update(host="h9"), "host 'h9' is not a declared [[host]]"),
    (lambda d: d["host"][1].update(site="b"), "site 'b' is not a declared [[site]]"),
    (lambda d: d["host"][0].update(proxy=False), "exactly one host must have proxy = true"),
    (lambda d: d["host"][1].update(proxy=True), "exactly one host must have proxy = true"),
    (lambda d: d["guest"][1].update(name="g1"), "duplicate guest name 'g1'"),
    (lambda d: d["guest"][1].update(ip="10.10.0.1"), "ip 10.10.0.1 is used by another guest"),
    (lambda d: d["guest"][0].update(mac="01:00:5e:00:00:01"), "multicast"),
    (lambda d: d["guest"][0].update(mac="nope"), "mac 'nope' is not a MAC"),
    (lambda d: d["guest"][0].update(ip="192.168.1.1"), "not a host address of 10.10.0.0/16"),
    (lambda d: d["guest"][0].update(mtu=100), "mtu 100 must be an integer"),
    (lambda d: d["guest"][0].update(attach="usb"), "attach 'usb' must be one of veth, tap"),
    (lambda d: d["guest"][0].update(name="Very-Long-Name"), "name 'Very-Long-Name' must be"),
    (lambda d: d["host"][0].update(proxy="yes"), "proxy = 'yes' has the wrong type"),
    (lambda d: d.update(guest_net="10.99.1.0/24"), "overlaps underlay_net"),
    (lambda d: d["site"].append({"name": "b"}), "no [[wan]] joins sites 'a' and 'b'"),
    (lambda d: (d["site"].append({"name": "b"}),
                d.update(wan=[{"sites": ["a", "c"]}])), "site 'c' is not a declared [[site]]"),
    (lambda d: (d["site"].append({"name": "b"}),
                d.update(wan=[{"sites": ["a", "b"], "delay_ms": -1}])), "delay_ms -1"),
    (lambda d: (d["site"].append({"name": "b"}),
                d.update(wan=[{"sites": ["a", "b"], "shaper": "netem"}])), "shaper 'netem'"),
])
def test_bad_spec_names_what_is_wrong(change: Any, message: str) -> None:
    d = minimal()
    change(d)
    with pytest.raises(SpecError) as e:
        TestbedSpec.from_dict(d)
    assert message in str(e.value)


def test_load_spec_names_the_file(tmp_path: Any) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('[[site]]\nname = "a"\nflavour = 1\n')
    with pytest.raises(SpecError, match=r"bad\.toml: \[\[site\]\] #1: unknown key 'flavour'"):
        load_spec(p)
    p.write_text("[[site]\n")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(p)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_plan_names_and_addresses(path: Any) -> None:
    spec = load_spec(path)
    plan = make_plan(spec, "vt0abc")
    assert all(n.startswith("vt0abc-") for n in plan.namespaces)
    assert len(set(plan.namespaces)) == len(plan.namespaces)
    under = ipaddress.IPv4Network(spec.underlay_net)
    ips = [h.underlay_ip for h in plan.hosts] + [w.ip_a for w in plan.wans]
    ips += [w.ip_b for w in plan.wans] + [s.gateway_ip for s in plan.sites]
    assert len(set(ips)) == len(ips)
    assert all(ipaddress.IPv4Address(ip) in under for ip in ips)
    for h in plan.hosts:
        assert ipaddress.IPv4Address(h.underlay_ip) in ipaddress.IPv4Network(
            plan.site(h.site).subnet)
    names = [g.host_ifname for g in plan.guests] + [h.site_ifname for h in plan.hosts]
    names += [w.ifname_a for w in plan.wans] + [w.ifname_b for w in plan.wans]
    assert all(len(n) <= 15 for n in names)
    assert (plan.wan_netns is not None) == any(w.delay_ms > 0 for w in spec.wans)


def test_tc_commands() -> None:
    plan = make_plan(load_spec(SPECS / "wan.toml"), "vt0abc")
    tbf = tc_commands(plan.wans[0], "w-east")
    assert tbf == [["qdisc", "replace", "dev", "w-east", "root", "tbf", "rate", "50000000bit",
                    "burst", "25000", "limit", "312500"]]
    htb = tc_commands(make_plan(load_spec(SPECS / "two-clusters.toml"), "vt0abc").wans[0], "x")
    assert htb[1][-4:] == ["rate", "100000000bit", "ceil", "100000000bit"]
    d = minimal()
    d["site"].append({"name": "b"})
    d["wan"] = [{"sites": ["a", "b"]}]
    assert tc_commands(make_plan(TestbedSpec.from_dict(d), "vt0abc").wans[0], "x") == []
