"""Overlay description files for `vnet apply` (pure: parse, build, diff).

A TOML file describes the whole overlay, as the original's configuration
language did: hosts with their listener, which guest lives on which host,
fast-path links and forwarding rules. It becomes one DesiredState per host.

    generation = 7                      # optional: default is one above what runs

    [[host]]
    name = "h1"
    address = "10.99.1.11:7000"         # its forwarder's --listen

    [[guest]]
    name = "g1"
    host = "h1"
    mac = "02:76:6e:00:00:01"

    [[link]]
    id = "h1-h2"
    hosts = ["h1", "h2"]
    transport = "tcp"                   # tcp | udp | tls

    [[rule]]
    host = "h1"                         # the forwarder that holds the rule
    dst = "g2"                          # a guest name or a MAC; "" = any
    src = ""                            # likewise
    link = "h1-h2"                      # or guest = "g1", or drop = true

Unknown keys and dangling names raise OverlayError naming the table and value.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.bus.pb import vnet_pb2 as pb
from services.forwarder.ethernet import normalise_mac

_TRANSPORTS = {"tcp": pb.TRANSPORT_TCP, "udp": pb.TRANSPORT_UDP, "tls": pb.TRANSPORT_TLS}
_KEYS = {
    "top": {"generation", "host", "guest", "link", "rule"},
    "host": {"name", "address"},
    "guest": {"name", "host", "mac"},
    "link": {"id", "hosts", "transport"},
    "rule": {"host", "dst", "src", "link", "guest", "drop"},
}


class OverlayError(ValueError):
    """The description is wrong; the message says where."""


@dataclass(frozen=True)
class Overlay:
    generation: int  # 0: pick one above what runs
    hosts: dict[str, str]  # name -> address
    guests: dict[str, tuple[str, str]]  # name -> (host, mac)
    desired: dict[str, pb.DesiredState]  # host -> desired state (generation unset)


def _check(where: str, table: Any, kind: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise OverlayError(f"{where}: expected a table, got {table!r}")
    unknown = sorted(set(table) - _KEYS[kind])
    if unknown:
        raise OverlayError(f"{where}: unknown key {unknown[0]!r} (allowed: {sorted(_KEYS[kind])})")
    return table


def _str(where: str, table: dict[str, Any], key: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise OverlayError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def parse(data: dict[str, Any]) -> Overlay:
    top = _check("file", data, "top")
    generation = top.get("generation", 0)
    if not isinstance(generation, int) or generation < 0:
        raise OverlayError(f"generation must be a non-negative integer, got {generation!r}")
    hosts: dict[str, str] = {}
    for i, t in enumerate(top.get("host", [])):
        w = f"host[{i}]"
        t = _check(w, t, "host")
        hosts[_str(w, t, "name")] = _str(w, t, "address")
    guests: dict[str, tuple[str, str]] = {}
    for i, t in enumerate(top.get("guest", [])):
        w = f"guest[{i}]"
        t = _check(w, t, "guest")
        host = _str(w, t, "host")
        if host not in hosts:
            raise OverlayError(f"{w}: host {host!r} is not declared")
        try:
            guests[_str(w, t, "name")] = (host, normalise_mac(_str(w, t, "mac")))
        except ValueError as exc:
            raise OverlayError(f"{w}: {exc}") from None
    desired = {h: pb.DesiredState(host=h) for h in hosts}
    for i, t in enumerate(top.get("link", [])):
        w = f"link[{i}]"
        t = _check(w, t, "link")
        link_id = _str(w, t, "id")
        pair = t.get("hosts")
        if not isinstance(pair, list) or len(pair) != 2 or pair[0] == pair[1]:
            raise OverlayError(f"{w}: hosts must be two different host names, got {pair!r}")
        transport = _str(w, t, "transport", "tcp")
        if transport not in _TRANSPORTS:
            raise OverlayError(f"{w}: transport {transport!r} must be one of {sorted(_TRANSPORTS)}")
        for a, b in (pair, pair[::-1]):
            if a not in hosts or b not in hosts:
                raise OverlayError(f"{w}: host {a if a not in hosts else b!r} is not declared")
            desired[a].links.append(pb.LinkSpec(
                id=link_id, peer_host=b, peer_address=hosts[b], transport=_TRANSPORTS[transport],
                fast_path=True))
    for i, t in enumerate(top.get("rule", [])):
        w = f"rule[{i}]"
        t = _check(w, t, "rule")
        host = _str(w, t, "host")
        if host not in desired:
            raise OverlayError(f"{w}: host {host!r} is not declared")
        rule = pb.Rule(dst_mac=_mac(w, t.get("dst", ""), guests),
                       src_mac=_mac(w, t.get("src", ""), guests))
        actions = [k for k in ("link", "guest", "drop") if k in t]
        if len(actions) != 1:
            raise OverlayError(f"{w}: needs exactly one of link, guest, drop")
        if "link" in t:
            link = _str(w, t, "link")
            if not any(s.id == link for s in desired[host].links):
                raise OverlayError(f"{w}: rule names unknown link {link!r} on host {host!r}")
            rule.link_id = link
        elif "guest" in t:
            rule.guest_id = _str(w, t, "guest")
        else:
            rule.drop = bool(t["drop"])
        desired[host].rules.append(rule)
    return Overlay(generation, hosts, guests, desired)


def _mac(where: str, value: Any, guests: dict[str, tuple[str, str]]) -> str:
    if not isinstance(value, str):
        raise OverlayError(f"{where}: MAC or guest name must be a string, got {value!r}")
    if not value:
        return ""
    if value in guests:
        return guests[value][1]
    try:
        return normalise_mac(value)
    except ValueError:
        raise OverlayError(f"{where}: {value!r} is neither a guest name nor a MAC") from None


def load(path: str | Path) -> Overlay:
    p = Path(path)
    try:
        return parse(tomllib.loads(p.read_text()))
    except tomllib.TOMLDecodeError as exc:
        raise OverlayError(f"{p}: not valid TOML: {exc}") from None
    except OverlayError as exc:
        raise OverlayError(f"{p}: {exc}") from None


def _link_text(s: pb.LinkSpec) -> str:
    return f"link {s.id} -> {s.peer_host} {s.peer_address} {pb.Transport.Name(s.transport)[10:]}"


def rule_text(r: pb.Rule) -> str:
    action = r.WhichOneof("action")
    target = {"link_id": f"link {r.link_id}", "guest_id": f"guest {r.guest_id}",
              "drop": "drop"}.get(action or "", "?")
    return f"rule dst={r.dst_mac or '*'} src={r.src_mac or '*'} -> {target}"


def diff(current: pb.ForwarderState | None, want: pb.DesiredState) -> list[str]:
    """Lines "+ ..." / "- ..." from what runs on a host to what is wanted."""
    have_links: set[str] = set()
    have_rules: set[str] = set()
    if current is not None:
        have_links = {_link_text(ls.spec) for ls in current.links if ls.spec.fast_path}
        have_rules = {rule_text(r) for r in current.rules}
    want_links = {_link_text(s) for s in want.links}
    want_rules = {rule_text(r) for r in want.rules}
    out = [f"- {t}" for t in sorted(have_links - want_links)]
    out += [f"+ {t}" for t in sorted(want_links - have_links)]
    out += [f"- {t}" for t in sorted(have_rules - want_rules)]
    out += [f"+ {t}" for t in sorted(want_rules - have_rules)]
    return out


def placement_problems(overlay: Overlay, states: dict[str, pb.ForwarderState]) -> list[str]:
    """Guests the file places on a host whose forwarder does not report them."""
    out = []
    for name, (host, mac) in sorted(overlay.guests.items()):
        st = states.get(host)
        if st is not None and not any(g.id == name or g.mac == mac for g in st.guests):
            out.append(f"guest {name} ({mac}) is not attached on {host}")
    return out
