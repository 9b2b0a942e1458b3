"""Testbed SPEC: sites, hosts, guests and the WAN between sites, read from TOML.

Every table declares its keys with defaults; an unknown key, a bad value or a
reference to something undeclared raises `SpecError` naming the table, the key
and the value. Guests get stable MACs and IPs derived from their index in the
file, so the same SPEC gives the same addresses on every run.

Default guest MTU is 1400, below the underlay's 1500: the forwarder carries each
guest frame (up to MTU + 14 bytes of Ethernet header) inside a TCP or UDP overlay
link over IPv4 (+ 4-byte length prefix, + 20 IP, + 20 TCP or 8 UDP, + TLS record
overhead when TLS is on), and that must fit the underlay's MTU without IP
fragmentation.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_GUEST_MTU = 1400
"""Guest MTU: leaves 100 bytes of headroom on a 1500-byte underlay for overlay headers."""
DEFAULT_UNDERLAY_MTU = 1500
DEFAULT_GUEST_NET = "10.10.0.0/16"
"""One IP subnet for all guests: they form one layer-2 network through vnet."""
DEFAULT_UNDERLAY_NET = "10.99.0.0/16"
"""Underlay: site i gets 10.99.<i+1>.0/24 (gateway .1, hosts .10 up); WAN point-to-point
links take /30s from 10.99.255.0/24."""
MAC_BASE = 0x02_76_6E_00_00_00
"""Locally administered MACs 02:76:6e:.. ("vn"); guest i gets MAC_BASE + i + 1."""
ATTACH_KINDS = ("veth", "tap")
SHAPERS = ("tbf", "htb")

# Interface names are at most 15 bytes; the longest we derive is "g-<guest>".
_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")


class SpecError(ValueError):
    """The SPEC is wrong; the message says where and what."""


@dataclass(frozen=True)
class SiteSpec:
    name: str


@dataclass(frozen=True)
class HostSpec:
    name: str
    site: str
    proxy: bool = False


@dataclass(frozen=True)
class GuestSpec:
    name: str
    host: str
    mac: str
    ip: str
    prefix_len: int
    mtu: int
    attach: str = "veth"


@dataclass(frozen=True)
class WanSpec:
    """The link between two sites: one-way delay and rate, the same both ways."""

    sites: tuple[str, str]
    delay_ms: float = 0.0
    rate_mbit: float | None = None
    shaper: str = "tbf"


@dataclass(frozen=True)
class TestbedSpec:
    sites: tuple[SiteSpec, ...]
    hosts: tuple[HostSpec, ...]
    guests: tuple[GuestSpec, ...]
    wans: tuple[WanSpec, ...] = ()
    guest_mtu: int = DEFAULT_GUEST_MTU
    underlay_mtu: int = DEFAULT_UNDERLAY_MTU
    guest_net: str = DEFAULT_GUEST_NET
    underlay_net: str = DEFAULT_UNDERLAY_NET
    lan_ip: str = ""
    name: str = field(default="testbed", compare=False)

    __test__ = False  # not a pytest test class despite the name

    @property
    def proxy(self) -> HostSpec:
        return next(h for h in self.hosts if h.proxy)

    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if h.name == name:
                return h
        raise SpecError(f"unknown host {name!r}")

    def wan(self, a: str, b: str) -> WanSpec | None:
        for w in self.wans:
            if set(w.sites) == {a, b}:
                return w
        return None

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str = "testbed") -> TestbedSpec:
        return _parse(d, name)


def load_spec(path: str | Path) -> TestbedSpec:
    """Read a SPEC from a TOML file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{p}: not valid TOML: {e}") from e
    try:
        return _parse(data, p.stem)
    except SpecError as e:
        raise SpecError(f"{p}: {e}") from e


# --- parsing ------------------------------------------------------------------

_TOP_KEYS = {"guest_mtu", "underlay_mtu", "guest_net", "underlay_net", "lan_ip",
             "site", "host", "guest", "wan"}
_SITE_KEYS = {"name"}
_HOST_KEYS = {"name", "site", "proxy"}
_GUEST_KEYS = {"name", "host", "mac", "ip", "mtu", "attach"}
_WAN_KEYS = {"sites", "delay_ms", "rate_mbit", "shaper"}


def _check_keys(where: str, table: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise SpecError(f"{where}: expected a table, got {table!r}")
    for key in table:
        if key not in allowed:
            raise SpecError(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
    return table


def _typed(where: str, table: dict[str, Any], key: str, kind: type | tuple[type, ...],
           default: Any = None, required: bool = False) -> Any:
    if key not in table:
        if required:
            raise SpecError(f"{where}: missing key {key!r}")
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise SpecError(f"{where}: {key} = {value!r} has the wrong type")
    return value


def _name(where: str, table: dict[str, Any]) -> str:
    name = _typed(where, table, "name", str, required=True)
    if not _NAME.match(name):
        raise SpecError(
            f"{where}: name {name!r} must be 1-12 lower-case letters or digits, starting "
            "with a letter (it becomes part of interface names, at most 15 bytes)")
    return str(name)


def _tables(d: dict[str, Any], key: str) -> list[Any]:
    value = d.get(key, [])
    if not isinstance(value, list):
        raise SpecError(f"[[{key}]] must be an array of tables, got {value!r}")
    return value


def _mtu(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 576 <= value <= 65535:
        raise SpecError(f"{where}: mtu {value!r} must be an integer in 576..65535")
    return value


def _network(where: str, value: Any) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value, strict=True)
    except (ValueError, TypeError) as e:
        raise SpecError(f"{where}: {value!r} is not an IPv4 network: {e}") from e


def _mac(where: str, value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$", value):
        raise SpecError(f"{where}: mac {value!r} is not a MAC like 02:00:00:00:00:01")
    mac = value.lower()
    if int(mac[:2], 16) & 1:
        raise SpecError(f"{where}: mac {value!r} is a multicast address; a guest needs unicast")
    return mac


def _unique(kind: str, names: list[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise SpecError(f"duplicate {kind} name {n!r}")
        seen.add(n)


def _parse(d: dict[str, Any], spec_name: str) -> TestbedSpec:
    _check_keys("top level", d, _TOP_KEYS)
    guest_mtu = _mtu("guest_mtu", d.get("guest_mtu", DEFAULT_GUEST_MTU))
    underlay_mtu = _mtu("underlay_mtu", d.get("underlay_mtu", DEFAULT_UNDERLAY_MTU))
    guest_net = _network("guest_net", d.get("guest_net", DEFAULT_GUEST_NET))
    underlay_net = _network("underlay_net", d.get("underlay_net", DEFAULT_UNDERLAY_NET))
    if underlay_net.prefixlen > 16:
        raise SpecError(f"underlay_net {underlay_net} must be a /16 or larger")
    if guest_net.overlaps(underlay_net):
        raise SpecError(f"guest_net {guest_net} overlaps underlay_net {underlay_net}")

    sites = []
    for i, t in enumerate(_tables(d, "site")):
        where = f"[[site]] #{i + 1}"
        _check_keys(where, t, _SITE_KEYS)
        sites.append(SiteSpec(_name(where, t)))
    if not sites:
        raise SpecError("no [[site]]: declare at least one site")
    if len(sites) > 100:
        raise SpecError(f"{len(sites)} sites: at most 100 are supported")
    _unique("site", [s.name for s in sites])
    site_names = {s.name for s in sites}

    hosts = []
    for i, t in enumerate(_tables(d, "host")):
        where = f"[[host]] #{i + 1}"
        _check_keys(where, t, _HOST_KEYS)
        name = _name(where, t)
        where = f"host {name!r}"
        site = _typed(where, t, "site", str, required=True)
        if site not in site_names:
            raise SpecError(f"{where}: site {site!r} is not a declared [[site]]")
        hosts.append(HostSpec(name, site, bool(_typed(where, t, "proxy", bool, False))))
    if not hosts:
        raise SpecError("no [[host]]: declare at least one host")
    _unique("host", [h.name for h in hosts])
    proxies = [h.name for h in hosts if h.proxy]
    if len(proxies) != 1:
        raise SpecError(f"exactly one host must have proxy = true, found {proxies or 'none'}")
    host_names = {h.name for h in hosts}
    if len(hosts) > 200:
        raise SpecError(f"{len(hosts)} hosts: at most 200 are supported")

    guests = []
    usable = guest_net.num_addresses - 3  # network, broadcast, and the LAN stand-in
    for i, t in enumerate(_tables(d, "guest")):
        where = f"[[guest]] #{i + 1}"
        _check_keys(where, t, _GUEST_KEYS)
        name = _name(where, t)
        where = f"guest {name!r}"
        host = _typed(where, t, "host", str, required=True)
        if host not in host_names:
            raise SpecError(f"{where}: host {host!r} is not a declared [[host]]")
        mac = _mac(where, t["mac"]) if "mac" in t else _default_mac(i)
        if "ip" in t:
            ip_s = _typed(where, t, "ip", str)
            try:
                ip = ipaddress.IPv4Address(ip_s)
            except ValueError as e:
                raise SpecError(f"{where}: ip {ip_s!r} is not an IPv4 address") from e
            if ip not in guest_net or ip in (guest_net.network_address,
                                             guest_net.broadcast_address):
                raise SpecError(f"{where}: ip {ip_s!r} is not a host address of {guest_net}")
        else:
            if i >= usable:
                raise SpecError(f"{where}: guest_net {guest_net} has no room for guest #{i + 1}")
            ip = guest_net.network_address + i + 1
        mtu = _mtu(where, t.get("mtu", guest_mtu))
        attach = _typed(where, t, "attach", str, "veth")
        if attach not in ATTACH_KINDS:
            raise SpecError(f"{where}: attach {attach!r} must be one of {', '.join(ATTACH_KINDS)}")
        guests.append(GuestSpec(name, host, mac, str(ip), guest_net.prefixlen, mtu, attach))
    _unique("guest", [g.name for g in guests])
    for kind, values in (("mac", [g.mac for g in guests]), ("ip", [g.ip for g in guests])):
        seen: set[str] = set()
        for g, v in zip(guests, values, strict=True):
            if v in seen:
                raise SpecError(f"guest {g.name!r}: {kind} {v} is used by another guest")
            seen.add(v)

    wans: list[WanSpec] = []
    for i, t in enumerate(_tables(d, "wan")):
        where = f"[[wan]] #{i + 1}"
        _check_keys(where, t, _WAN_KEYS)
        pair = _typed(where, t, "sites", list, required=True)
        if len(pair) != 2 or pair[0] == pair[1] or not all(isinstance(s, str) for s in pair):
            raise SpecError(f"{where}: sites {pair!r} must name two different sites")
        for s in pair:
            if s not in site_names:
                raise SpecError(f"{where}: site {s!r} is not a declared [[site]]")
        delay = _typed(where, t, "delay_ms", (int, float), 0.0)
        if not 0 <= delay <= 10_000:
            raise SpecError(f"{where}: delay_ms {delay!r} must be in 0..10000")
        rate = _typed(where, t, "rate_mbit", (int, float), None)
        if rate is not None and not 0.01 <= rate <= 100_000:
            raise SpecError(f"{where}: rate_mbit {rate!r} must be in 0.01..100000")
        shaper = _typed(where, t, "shaper", str, "tbf")
        if shaper not in SHAPERS:
            raise SpecError(f"{where}: shaper {shaper!r} must be one of {', '.join(SHAPERS)}")
        w = WanSpec((pair[0], pair[1]), float(delay), None if rate is None else float(rate),
                    shaper)
        if any(set(o.sites) == set(w.sites) for o in wans):
            raise SpecError(f"{where}: sites {pair!r} already have a [[wan]]")
        wans.append(w)
    for a_i, a in enumerate(sites):
        for b in sites[a_i + 1:]:
            if not any(set(w.sites) == {a.name, b.name} for w in wans):
                raise SpecError(
                    f"no [[wan]] joins sites {a.name!r} and {b.name!r}: every pair of sites "
                    "needs one (delay_ms = 0 and no rate_mbit for a plain link)")
    if len(wans) > 60:
        raise SpecError(f"{len(wans)} [[wan]] links: at most 60 are supported")

    lan_ip_s = d.get("lan_ip", str(guest_net.broadcast_address - 1))
    try:
        lan_ip = ipaddress.IPv4Address(lan_ip_s)
    except ValueError as e:
        raise SpecError(f"lan_ip {lan_ip_s!r} is not an IPv4 address") from e
    if lan_ip not in guest_net:
        raise SpecError(f"lan_ip {lan_ip} is not in guest_net {guest_net}")
    if str(lan_ip) in {g.ip for g in guests}:
        raise SpecError(f"lan_ip {lan_ip} is also a guest's ip")

    return TestbedSpec(
        sites=tuple(sites), hosts=tuple(hosts), guests=tuple(guests), wans=tuple(wans),
        guest_mtu=guest_mtu, underlay_mtu=underlay_mtu, guest_net=str(guest_net),
        underlay_net=str(underlay_net), lan_ip=str(lan_ip), name=spec_name,
    )


def _default_mac(index: int) -> str:
    value = MAC_BASE + index + 1
    return ":".join(f"{(value >> (8 * k)) & 0xFF:02x}" for k in range(5, -1, -1))
