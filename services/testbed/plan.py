"""The testbed's layout, computed from a SPEC and a run prefix: pure, no I/O.

Namespaces (all named ``<prefix>-...`` so a run's leftovers are found by exact prefix):

- ``<prefix>-s-<site>``: the site's underlay segment (bridge ``br0``, the site's gateway
  address on it) and its router towards the other sites (``w-<site>`` interfaces);
- ``<prefix>-h-<host>``: a host, where its forwarder runs; ``u0`` on its site's segment
  (the underlay), ``g-<guest>`` for each veth-attached guest, ``lan0`` on the proxy;
- ``<prefix>-g-<guest>``: a guest, with ``eth0`` and ``lo``;
- ``<prefix>-lan``: the user's LAN, ``eth0`` joined to the proxy host's ``lan0``;
- ``<prefix>-wan``: the delay relays' namespace, present when some [[wan]] has a delay.

Interfaces live only inside these namespaces; the root namespace gets none.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from services.testbed.spec import TestbedSpec

UNDERLAY_IFNAME = "u0"
LAN_IFNAME = "lan0"
GUEST_IFNAME = "eth0"
BRIDGE_IFNAME = "br0"
WAN_MAC_BASE = 0x02_76_6E_FF_00_00
LAN_MAC = "02:76:6e:fe:ff:fe"


@dataclass(frozen=True)
class GuestInfo:
    """A guest as the forwarder sees it: where it lives and what it answers to."""

    name: str
    host: str
    netns: str
    mac: str
    ip: str
    prefix_len: int
    mtu: int
    host_ifname: str
    attach: str = "veth"


@dataclass(frozen=True)
class SitePlan:
    name: str
    netns: str
    subnet: str
    gateway_ip: str


@dataclass(frozen=True)
class HostPlan:
    name: str
    site: str
    netns: str
    underlay_ip: str
    prefix_len: int
    gateway_ip: str
    proxy: bool
    site_ifname: str  # the underlay veth's other end, on the site's bridge


@dataclass(frozen=True)
class WanPlan:
    """A point-to-point link between two site routers, through a delay relay if delayed."""

    index: int
    site_a: str
    site_b: str
    ifname_a: str  # in site a's namespace
    ifname_b: str  # in site b's namespace
    ip_a: str
    ip_b: str
    mac_a: str
    mac_b: str
    delay_ms: float
    rate_mbit: float | None
    shaper: str
    relay_ifname_a: str  # in the wan namespace, joined to ifname_a (when delayed)
    relay_ifname_b: str

    @property
    def relayed(self) -> bool:
        return self.delay_ms > 0


@dataclass(frozen=True)
class Plan:
    prefix: str
    sites: tuple[SitePlan, ...]
    hosts: tuple[HostPlan, ...]
    guests: tuple[GuestInfo, ...]
    wans: tuple[WanPlan, ...]
    lan_netns: str
    lan_ip: str
    lan_prefix_len: int
    lan_mtu: int
    wan_netns: str | None
    underlay_mtu: int

    def site(self, name: str) -> SitePlan:
        return next(s for s in self.sites if s.name == name)

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of the run, in creation order."""
        names = [s.netns for s in self.sites] + [h.netns for h in self.hosts]
        names += [g.netns for g in self.guests] + [self.lan_netns]
        if self.wan_netns:
            names.append(self.wan_netns)
        return names


def _mac(value: int) -> str:
    return ":".join(f"{(value >> (8 * k)) & 0xFF:02x}" for k in range(5, -1, -1))


def make_plan(spec: TestbedSpec, prefix: str) -> Plan:
    net = ipaddress.IPv4Network(spec.underlay_net)
    base = int(net.network_address)
    sites = []
    for i, s in enumerate(spec.sites):
        subnet = ipaddress.IPv4Network((base + ((i + 1) << 8), 24))
        sites.append(SitePlan(s.name, f"{prefix}-s-{s.name}", str(subnet),
                              str(subnet.network_address + 1)))
    by_site = {s.name: s for s in sites}

    hosts = []
    per_site: dict[str, int] = {}
    for h in spec.hosts:
        n = per_site.get(h.site, 0)
        per_site[h.site] = n + 1
        if n >= 240:
            raise ValueError(f"site {h.site!r} has more than 240 hosts")
        sp = by_site[h.site]
        subnet = ipaddress.IPv4Network(sp.subnet)
        hosts.append(HostPlan(h.name, h.site, f"{prefix}-h-{h.name}",
                              str(subnet.network_address + 10 + n), 24, sp.gateway_ip,
                              h.proxy, f"h-{h.name}"))

    guests = tuple(
        GuestInfo(g.name, g.host, f"{prefix}-g-{g.name}", g.mac, g.ip, g.prefix_len, g.mtu,
                  f"g-{g.name}", g.attach)
        for g in spec.guests
    )

    wans = []
    p2p_base = base + (255 << 8)
    for k, w in enumerate(spec.wans):
        a, b = w.sites
        wans.append(WanPlan(
            index=k, site_a=a, site_b=b, ifname_a=f"w-{b}", ifname_b=f"w-{a}",
            ip_a=str(ipaddress.IPv4Address(p2p_base + 4 * k + 1)),
            ip_b=str(ipaddress.IPv4Address(p2p_base + 4 * k + 2)),
            mac_a=_mac(WAN_MAC_BASE + 2 * k + 1), mac_b=_mac(WAN_MAC_BASE + 2 * k + 2),
            delay_ms=w.delay_ms, rate_mbit=w.rate_mbit, shaper=w.shaper,
            relay_ifname_a=f"p{k}a", relay_ifname_b=f"p{k}b",
        ))

    guest_net = ipaddress.IPv4Network(spec.guest_net)
    return Plan(
        prefix=prefix, sites=tuple(sites), hosts=tuple(hosts), guests=guests, wans=tuple(wans),
        lan_netns=f"{prefix}-lan", lan_ip=spec.lan_ip, lan_prefix_len=guest_net.prefixlen,
        lan_mtu=spec.guest_mtu,
        wan_netns=f"{prefix}-wan" if any(w.relayed for w in wans) else None,
        underlay_mtu=spec.underlay_mtu,
    )


def tc_commands(wan: WanPlan, ifname: str) -> list[list[str]]:
    """`tc` argument lists that shape one direction of a WAN link at `rate_mbit`.

    The burst holds about 4 ms at the rate (at least two full frames) and the queue
    about 50 ms, so a TCP flow over the link can fill it without tail drops dominating.
    """
    if wan.rate_mbit is None:
        return []
    rate_bps = wan.rate_mbit * 1e6
    rate = f"{int(rate_bps)}bit"
    if wan.shaper == "tbf":
        burst = max(2 * 1514, int(rate_bps / 8 * 0.004))
        limit = max(3 * burst, int(rate_bps / 8 * 0.05))
        return [["qdisc", "replace", "dev", ifname, "root", "tbf", "rate", rate,
                 "burst", str(burst), "limit", str(limit)]]
    # HTB: one class holding everything; its leaf queue is a pfifo of ~50 ms.
    limit_pkts = max(100, int(rate_bps / 8 * 0.05 / 1500))
    return [
        ["qdisc", "replace", "dev", ifname, "root", "handle", "1:", "htb", "default", "10"],
        ["class", "add", "dev", ifname, "parent", "1:", "classid", "1:10", "htb",
         "rate", rate, "ceil", rate],
        ["qdisc", "add", "dev", ifname, "parent", "1:10", "handle", "10:", "pfifo",
         "limit", str(limit_pkts)],
    ]
