"""The forwarding core: ports, the forwarding table, and the per-frame decision.

Pure: `route(ingress, vframe)` returns the ports to send the frame to and
counts it; no sockets or clocks. Ports are small integers (list indices) so
the hot path does list and dict lookups only.

Unicast: the most specific rule wins — (dst, src), then dst, then src —
then what the forwarder knows from configuration, not learning: its own
guests' MACs, and on the proxy the guest MACs each star peer announced in
its link handshake; then the default rule, towards the proxy (on the proxy
itself: out to the user's LAN when it bridges one, else no route). A rule
whose link is down is skipped, so traffic falls back to the star instead of
being lost while a fast-path link comes back.

Broadcast and multicast go over a loop-free tree, the star through the
proxy: every local guest but the sender gets it once; a non-proxy sends it
only on its star link; the proxy sends it on every star link except the one
it came from; fast-path links never carry it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from services.forwarder.counting import PairCounter
from services.forwarder.ethernet import mac_from_str

NO_ROUTE = -1
RULE_DROP = -2
_CACHE_LIMIT = 100_000


class PortKind(Enum):
    GUEST = "guest"
    LINK = "link"


@dataclass
class Port:
    index: int
    name: str
    kind: PortKind
    star: bool = False  # a link of the resilient star (towards/from the proxy)
    up: bool = True
    mac: bytes = b""  # a guest's MAC
    peer_macs: tuple[bytes, ...] = ()  # guests a star peer announced (proxy side)
    peer_host: str = ""  # a link's far end, when known
    segment: str = ""  # a guest's interface when several guests may share it


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A validated rule: MACs as bytes (b"" = wildcard) and its target."""

    dst: bytes
    src: bytes
    link_id: str = ""
    guest_id: str = ""
    drop: bool = False


class ForwarderCore:
    """Ports, rules and counters of one forwarder."""

    def __init__(self, host: str, is_proxy: bool, star_link_id: str = "",
                 counting: bool = True, lan_port: str = "") -> None:
        self.host = host
        self.counting = counting
        # The proxy's bridge onto the user's LAN: its default route, so frames
        # for MACs no forwarder announced go out there.
        self.lan_port = lan_port
        self.is_proxy = is_proxy
        self.star_link_id = star_link_id
        self.ports: list[Port | None] = []
        self.by_name: dict[str, int] = {}
        self.rules: list[CompiledRule] = []
        self.pairs = PairCounter()
        self.counters: dict[str, int] = {
            "frames_in": 0,
            "no_route": 0,
            "rule_drop": 0,
            "hairpin": 0,
            "same_segment": 0,
            "broadcast": 0,
        }
        self._is_guest: list[bool] = []
        self._flood: list[tuple[int, ...]] = []
        self._segment: list[str] = []
        self._cache: dict[bytes, int] = {}
        self._exact: dict[bytes, CompiledRule] = {}
        self._dst: dict[bytes, CompiledRule] = {}
        self._src: dict[bytes, CompiledRule] = {}
        # Called after every change of ports, rules or liveness (the fast path re-syncs).
        self.on_rebuild: Callable[[], None] | None = None

    # ------------------------------------------------------------ ports

    def add_port(self, port_name: str, kind: PortKind, *, star: bool = False, up: bool = True,
                 mac: bytes = b"") -> int:
        if port_name in self.by_name:
            raise ValueError(f"port {port_name!r} already exists")
        index = len(self.ports)
        self.ports.append(Port(index, port_name, kind, star=star, up=up, mac=mac))
        self.by_name[port_name] = index
        self._rebuild()
        return index

    def add_guest(self, guest_id: str, mac: str, up: bool = True, segment: str = "") -> int:
        """A guest port; down while its attachment is not live (it gets no frames).

        Guests on one segment (one interface, e.g. a container network) reach each
        other through it, not through the forwarder: frames between them are dropped.
        """
        index = self.add_port(guest_id, PortKind.GUEST, mac=mac_from_str(mac), up=up)
        port = self.ports[index]
        assert port is not None
        port.segment = segment
        self._rebuild()
        return index

    def set_port_up(self, port_name: str, up: bool) -> None:
        port = self.port(port_name)
        if port is None:
            raise KeyError(f"no port {port_name!r}")
        if port.up != up:
            port.up = up
            self._rebuild()

    def add_link(self, link_id: str, star: bool, up: bool = False) -> int:
        return self.add_port(link_id, PortKind.LINK, star=star, up=up)

    def remove_port(self, port_name: str) -> None:
        index = self.by_name.pop(port_name)
        self.ports[index] = None
        self._rebuild()

    def port(self, port_name: str) -> Port | None:
        index = self.by_name.get(port_name)
        return None if index is None else self.ports[index]

    def set_link_up(self, link_id: str, up: bool, peer_macs: Iterable[str] = (),
                    peer_host: str = "") -> None:
        port = self.port(link_id)
        if port is None or port.kind is not PortKind.LINK:
            raise KeyError(f"no link {link_id!r}")
        port.up = up
        port.peer_macs = tuple(mac_from_str(m) for m in peer_macs) if up else ()
        if peer_host:
            port.peer_host = peer_host
        self._rebuild()

    def set_peer_macs(self, link_id: str, peer_macs: Iterable[str]) -> None:
        """A star peer's new guest set (it announced one after a guest moved)."""
        port = self.port(link_id)
        if port is None or port.kind is not PortKind.LINK:
            raise KeyError(f"no link {link_id!r}")
        port.peer_macs = tuple(mac_from_str(m) for m in peer_macs) if port.up else ()
        self._rebuild()

    def guests(self) -> list[Port]:
        return [p for p in self.ports if p is not None and p.kind is PortKind.GUEST]

    def links(self) -> list[Port]:
        return [p for p in self.ports if p is not None and p.kind is PortKind.LINK]

    def counted(self, index: int) -> bool:
        """Frames entering at this port are counted per (src, dst): a guest's, counting on."""
        return self._is_guest[index]

    def route_cache(self) -> dict[bytes, int]:
        """(dst + src) -> port, filled by route(); emptied whenever the tables change.

        The same dict for the core's lifetime: the compiled fast path reads it.
        """
        return self._cache

    # ------------------------------------------------------------ rules

    def set_rules(self, rules: list[CompiledRule]) -> None:
        """Replace the rule set (already validated by the desired-state step)."""
        self.rules = list(rules)
        self._rebuild()

    def _rebuild(self) -> None:
        self._cache.clear()
        self._exact = {r.dst + r.src: r for r in self.rules if r.dst and r.src}
        self._dst = {r.dst: r for r in self.rules if r.dst and not r.src}
        self._src = {r.src: r for r in self.rules if r.src and not r.dst}
        self._is_guest = [self.counting and p is not None and p.kind is PortKind.GUEST
                          for p in self.ports]
        guests = [p.index for p in self.guests() if p.up]
        self._segment = [p.segment if p is not None else "" for p in self.ports]
        star_up = [p.index for p in self.links() if p.star and p.up]
        flood: list[tuple[int, ...]] = []
        for port in self.ports:
            if port is None:
                flood.append(())
                continue
            local = [g for g in guests if g != port.index
                     and not (port.segment and self._segment[g] == port.segment)]
            if port.kind is PortKind.GUEST or (self.is_proxy and port.star):
                # From a guest: out on the star. On the proxy: on to the other spokes.
                flood.append(tuple(local + [s for s in star_up if s != port.index]))
            else:
                flood.append(tuple(local))
        self._flood = flood
        if self.on_rebuild is not None:
            self.on_rebuild()

    def _target(self, rule: CompiledRule) -> int | None:
        """Port index for a rule, RULE_DROP, or None when its port is missing or down."""
        if rule.drop:
            return RULE_DROP
        index = self.by_name.get(rule.link_id or rule.guest_id)
        if index is None:
            return None
        port = self.ports[index]
        if port is None or not port.up:
            return None
        return index

    def _known(self, dst: bytes) -> Port | None:
        """Where dst lives for sure: a live local guest, or a star peer that announced it."""
        for port in self.ports:
            if port is not None and port.up and (port.mac == dst or dst in port.peer_macs):
                return port
        return None

    def resolve(self, dst: bytes, src: bytes) -> int:
        """The port for a unicast (dst, src), RULE_DROP, or NO_ROUTE.

        Rules win, except that a rule sending a MAC somewhere it is known not to
        be (a guest here, or announced by another star peer) is stale — the guest
        moved and the control plane has not caught up — and the known place wins,
        so a move cannot bounce frames between two forwarders.
        """
        known = self._known(dst)
        for rule in (self._exact.get(dst + src), self._dst.get(dst), self._src.get(src)):
            if rule is not None:
                target = self._target(rule)
                if target is None:
                    continue
                if known is not None and target >= 0 and self._stale(target, known):
                    return known.index
                return target
        if known is not None:
            return known.index
        lan = self.by_name.get(self.lan_port) if self.lan_port else None
        if lan is not None:
            return lan
        if not self.is_proxy:
            star = self.by_name.get(self.star_link_id)
            if star is not None:
                star_port = self.ports[star]
                if star_port is not None and star_port.up:
                    return star
        return NO_ROUTE

    def _stale(self, target: int, known: Port) -> bool:
        if target == known.index:
            return False
        port = self.ports[target]
        if port is None:
            return True
        if known.kind is PortKind.GUEST:
            return True
        # Known through a star peer: a link to that same host is a fine route.
        return not (port.kind is PortKind.LINK and port.peer_host
                    and port.peer_host == known.peer_host)

    # ------------------------------------------------------------ hot path

    def peek(self, ingress: int, vframe: bytes) -> tuple[int, ...]:
        """Where route() sends a frame, without counting it (for capture)."""
        if vframe[10] & 1:
            return self._flood[ingress]
        out = self.resolve(bytes(vframe[10:16]), bytes(vframe[16:22]))
        return (out,) if out >= 0 and out != ingress else ()

    def route(self, ingress: int, vframe: bytes) -> tuple[int, ...]:
        """Count a frame and return the ports it goes to (maybe none).

        vframe is already size-checked (vnet header + at least 14 bytes). It may
        be a read-only memoryview (a frame still in a link's receive buffer):
        only its 12-byte MAC key is copied out.
        """
        key = bytes(vframe[10:22])  # bytes already for bytes (no copy); 12 bytes for a view
        counters = self.counters
        counters["frames_in"] += 1
        if self._is_guest[ingress]:  # counting frames that local guests send
            self.pairs.add(key, len(vframe) - 10)
        if vframe[10] & 1:
            counters["broadcast"] += 1
            return self._flood[ingress]
        out = self._cache.get(key)
        if out is None:
            out = self.resolve(key[:6], key[6:])
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = out
        if out >= 0:
            if out == ingress:
                counters["hairpin"] += 1
                return ()
            segment = self._segment[out]
            if segment and segment == self._segment[ingress]:
                counters["same_segment"] += 1  # the segment delivered it already
                return ()
            return (out,)
        counters["no_route" if out == NO_ROUTE else "rule_drop"] += 1
        return ()
