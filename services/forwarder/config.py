"""Forwarder settings, declared once with defaults and docs, and their parsing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from services.forwarder.ethernet import ETH_HDR_LEN, normalise_mac


@dataclass(frozen=True)
class GuestSpec:
    """One guest attachment, from `--guest id=g1,mac=..,iface=..|tap=..|qemu=..`.

    iface=NAME   an existing interface read with AF_PACKET (promiscuous, vnet header)
    tap=NAME     a TAP device this forwarder creates; netns=NS moves it into the guest's
                 namespace while the forwarder keeps the file descriptor
    qemu=ADDR    QEMU's stream netdev, QEMU the server: unix:/path or tcp:IP:PORT
    """

    id: str
    mac: str
    kind: str  # "packet" | "tap" | "qemu"
    target: str
    netns: str = ""
    ip: str = ""
    standby: bool = False  # not live until its first frame (a migration's destination)

    @staticmethod
    def parse(text: str) -> GuestSpec:
        fields_: dict[str, str] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep or not value:
                raise ValueError(f"guest option {part!r} in {text!r} is not key=value")
            if key not in ("id", "mac", "iface", "tap", "qemu", "netns", "ip"):
                raise ValueError(f"guest option {key!r} in {text!r} is unknown")
            fields_[key] = value
        if "id" not in fields_ or "mac" not in fields_:
            raise ValueError(f"guest {text!r} needs id= and mac=")
        kinds = [k for k in ("iface", "tap", "qemu") if k in fields_]
        if len(kinds) != 1:
            raise ValueError(f"guest {text!r} needs exactly one of iface=, tap=, qemu=")
        kind = {"iface": "packet", "tap": "tap", "qemu": "qemu"}[kinds[0]]
        target = fields_[kinds[0]]
        if kind == "qemu" and not (target.startswith("unix:") or target.startswith("tcp:")):
            raise ValueError(f"qemu address {target!r} must be unix:/path or tcp:IP:PORT")
        return GuestSpec(
            id=fields_["id"], mac=normalise_mac(fields_["mac"]), kind=kind, target=target,
            netns=fields_.get("netns", ""), ip=fields_.get("ip", ""),
        )


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"address {text!r} must be IP:PORT")
    return host.strip("[]"), int(port)


def parse_members(text: str) -> frozenset[str]:
    """A comma-separated list of host names, or a file with one per line."""
    if not text:
        return frozenset()
    path = Path(text)
    if path.exists():
        names = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    else:
        names = [n.strip() for n in text.split(",")]
    return frozenset(n for n in names if n)


@dataclass(frozen=True)
class ForwarderSettings:
    host: str
    listen: str  # IP:PORT of the overlay listener (TCP, TLS and UDP share it)
    is_proxy: bool = False
    proxy_address: str = ""  # IP:PORT of the proxy's listener (non-proxy only)
    proxy_transport: str = "tcp"  # the star link's transport: tcp | tls | udp
    guests: tuple[GuestSpec, ...] = ()
    members: frozenset[str] = field(default_factory=frozenset)  # empty: anyone
    update_rate_hz: float = 1.0  # frames.<host> publishing rate
    state_interval_s: float = 1.0  # links.<host> and state.<host>
    keepalive_s: float = 0.5  # link keepalive interval; dead after 3 missed
    mtu: int = 1500  # guest MTU: non-GSO frames over mtu + 18 bytes are dropped
    tls_cert: str = ""  # PEM certificate + key for TLS links (both sides)
    tls_key: str = ""
    tls_ca: str = ""  # CA (or the self-signed cert) peers must present
    handshake_s: float = 5.0  # connect + handshake deadline, both ways
    # TCP links' congestion control (TCP_CONGESTION); "" keeps the kernel's default.
    # cubic, Linux's own default: BBR without an fq qdisc paces in TCP itself, and a
    # link is a relay hop, not a path to probe (one stream, this kind of machine:
    # +6 % with cubic on the link, in two interleaved A/B runs).
    link_congestion: str = "cubic"
    max_link_buffer: int = 8 << 20  # bytes queued per link before frames are dropped
    # UDP links: the largest datagram payload the underlay carries unfragmented
    # (1472 on a 1500-byte IPv4 path); larger vframes go as FRAGMENT pieces.
    udp_datagram_max: int = 1472
    counting: bool = True  # count per (src, dst) pair; off only for benchmarks
    # The compiled fast path for the common frame (fastpath.py); off: pure Python.
    fastpath: bool = True
    capture_socket: str = ""  # UNIX socket path `vnet capture` connects to; "" = none
    lan_iface: str = ""  # proxy only: bridge the overlay onto this interface (AF_PACKET)

    @property
    def max_frame(self) -> int:
        return self.mtu + ETH_HDR_LEN + 4

    @property
    def star_link_id(self) -> str:
        return f"star-{self.host}"

    def check(self) -> None:
        parse_address(self.listen)
        if self.is_proxy and self.proxy_address:
            raise ValueError("--proxy and --proxy-address exclude each other")
        if not self.is_proxy and not self.proxy_address:
            raise ValueError("a non-proxy forwarder needs --proxy-address IP:PORT")
        if self.proxy_address:
            parse_address(self.proxy_address)
        if self.lan_iface and not self.is_proxy:
            raise ValueError("--lan bridges the overlay onto a LAN: only the proxy does that")
        if self.proxy_transport not in ("tcp", "tls", "udp"):
            raise ValueError(f"proxy transport {self.proxy_transport!r} must be tcp, tls or udp")
        if not 0 < self.update_rate_hz <= 1000:
            raise ValueError(f"update rate {self.update_rate_hz} Hz must be in (0, 1000]")
        if not 1100 <= self.udp_datagram_max <= 65_507:
            raise ValueError(f"UDP datagram size {self.udp_datagram_max} must be in"
                             " [1100, 65507] (a 64 KB frame in at most 64 pieces)")
        ids = [g.id for g in self.guests]
        if len(set(ids)) != len(ids):
            raise ValueError(f"guest ids {ids} are not unique")
        if self.members and self.host not in self.members:
            raise ValueError(f"host {self.host!r} is not in members {sorted(self.members)}")
