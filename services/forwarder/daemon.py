"""The forwarder's I/O shell: one asyncio loop around the pure core.

Owns the guest attachments, the overlay listener and links (the star link
to the proxy reconnects with backoff), keepalives, publishing on the bus and
applying desired state. Every bad input is logged (rate-limited), counted in
`counters` (reported in heartbeats) and dropped; the loop carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

from services.bus import log as buslog
from services.bus import topics
from services.bus.client import BusClient
from services.bus.counters import Counters
from services.bus.paircols import frame_counts_wire
from services.bus.pb import vnet_pb2 as pb
from services.forwarder import desired, fastpath, framing, messages
from services.forwarder.attach import (
    BATCH,
    READ_SIZE,
    Attachment,
    FdAttachment,
    LinkWatcher,
    PacketAttachment,
    QemuAttachment,
    TapAttachment,
    big_buffers,
    interface_index,
)
from services.forwarder.capture import CaptureConn
from services.forwarder.config import ForwarderSettings, GuestSpec, parse_address
from services.forwarder.core import ForwarderCore, PortKind
from services.forwarder.ethernet import MAX_GSO_FRAME, MIN_VFRAME, VNET_HDR_LEN, normalise_mac
from services.forwarder.fragments import Reassembler
from services.forwarder.framing import Hello, MsgType
from services.forwarder.hostcpu import CpuWatch, mount_private_cgroups
from services.forwarder.links import Link, StreamConn, UdpEndpoint
from services.forwarder.linkstate import LinkStats

_KIND = {"packet": pb.ATTACHMENT_PACKET, "tap": pb.ATTACHMENT_TAP,
         "qemu": pb.ATTACHMENT_QEMU_STREAM}
LAN_PORT = "lan"
_TRANSPORTS = {"tcp": pb.TRANSPORT_TCP, "tls": pb.TRANSPORT_TLS, "udp": pb.TRANSPORT_UDP}


def _drop(_: bytes) -> None:
    """Sender of a removed port."""


class Forwarder:
    """One forwarder process: attachments, links, bus."""

    def __init__(self, settings: ForwarderSettings, bus: BusClient | None = None) -> None:
        settings.check()
        self.s = settings
        self.bus = bus
        # The compiled fast path (fastpath.py), re-synced whenever the tables change;
        # made last, once everything it reads exists.
        self._fast: fastpath.Switch | None = None
        self.core = ForwarderCore(settings.host, settings.is_proxy, settings.star_link_id,
                                  counting=settings.counting,
                                  lan_port=LAN_PORT if settings.lan_iface else "")
        self.counters = Counters()
        self.log = buslog.get(component="forwarder")
        self.links: dict[str, Link] = {}
        self.managed: dict[str, pb.LinkSpec] = {}
        self.udp_peers: dict[tuple[str, int], Link] = {}
        self.attachments: dict[str, Attachment] = {}  # open, by guest id
        # Every guest this host should hold, live or waiting for its attachment.
        self.guest_specs: dict[str, GuestSpec] = {g.id: g for g in settings.guests}
        self._announced: tuple[str, ...] | None = None  # MACs the proxy last heard
        self._watcher: LinkWatcher | None = None
        # The publish loop's sleep, ended early when the state changes.
        self._state_waiter: asyncio.Future[None] | None = None
        self.senders: list[Callable[[bytes], None]] = []
        self.generation = 0
        self.rule_messages: list[pb.Rule] = []
        self.interval_index = 0
        self._frames_topic = topics.join(topics.FRAMES, settings.host)
        self.cpu_watch = CpuWatch()
        self.cgroups = ""  # how the cgroup files were found (mount_private_cgroups)
        self.host_cpu = pb.HostCpu()  # sampled once per state interval
        self.listen_host, self.listen_port = parse_address(settings.listen)
        self._dirty: set[Link] = set()
        self._accepting: dict[StreamConn, float] = {}  # inbound, no handshake yet: since
        self._udp: UdpEndpoint | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._mark_state()
        self._max_frame = settings.max_frame
        self._server_ssl, self._client_ssl = _tls_contexts(settings)
        self._captures: dict[int, list[CaptureConn]] = {}
        self._clock = time.monotonic()  # refreshed every tick: cheap per-frame timestamps
        self._fast_conns: set[StreamConn] = set()
        self._conn_class: type[StreamConn] = StreamConn
        if fastpath.wanted(settings.fastpath):
            self._fast = fastpath.compiled.Switch()
            self._conn_class = fastpath.FastStreamConn
            self.core.on_rebuild = self._sync_fast

    # ------------------------------------------------------------ errors

    def error(self, counter: str, detail: str, **extra: Any) -> None:
        """Count, and log the first few and then every 1000th of each kind."""
        self.counters.inc(counter)
        n = self.counters[counter]
        if n <= 5 or n % 1000 == 0:
            self.log.error(detail, counter=counter, count=n, **extra)

    # ------------------------------------------------------------ start / stop

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.bus is not None:  # the host's CPU limit goes out with the state
            self.cgroups = mount_private_cgroups()
        for spec in self.s.guests:
            self._attach(spec, loop)
        if self.s.lan_iface:
            self._attach(GuestSpec(id=LAN_PORT, mac="", kind="packet", target=self.s.lan_iface),
                         loop)
        self._watcher = LinkWatcher(self._recheck_guests)
        self._watcher.start(loop)
        server = await loop.create_server(
            lambda: self._new_inbound(), self.listen_host, self.listen_port, reuse_address=True
        )
        self._servers.append(server)
        if self._server_ssl is not None:
            tls_server = await loop.create_server(
                lambda: self._new_inbound(), self.listen_host, self.listen_port + 1,
                ssl=self._server_ssl, reuse_address=True,
            )
            self._servers.append(tls_server)
        udp_sock = socket.socket(socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET,
                                 socket.SOCK_DGRAM)
        try:
            udp_sock.bind((self.listen_host, self.listen_port))
            big_buffers(udp_sock, 16 << 20)
        except OSError:
            udp_sock.close()
            raise
        self._udp = UdpEndpoint(self, udp_sock, self.s.udp_datagram_max)
        self._udp.start(loop)
        if self.s.capture_socket:
            self._servers.append(await loop.create_unix_server(
                lambda: CaptureConn(self), self.s.capture_socket))
        if not self.s.is_proxy:
            star = pb.LinkSpec(
                id=self.s.star_link_id, peer_address=self.s.proxy_address,
                transport=_TRANSPORTS[self.s.proxy_transport],
                fast_path=False,
            )
            self._new_link(star, star=True, dialer=True)
        self._tasks.append(loop.create_task(self._timers()))
        if self.bus is not None:
            self._tasks.append(loop.create_task(self._publish_loop()))
            self._tasks.append(loop.create_task(self._desired_loop()))

    def _attach(self, spec: GuestSpec, loop: asyncio.AbstractEventLoop,
                strict: bool = True) -> None:
        """Add a guest's port and open its attachment.

        strict (configured guests): a missing interface fails the start. Not
        strict (attached at runtime): the guest waits, port down, until its
        interface appears in this namespace (a migration moving it here).
        """
        if spec.mac:
            self.core.add_guest(spec.id, spec.mac, up=False,
                                segment=spec.target if spec.kind == "packet" else "")
            self.guest_specs[spec.id] = spec
        else:  # the LAN: many MACs behind one port
            self.core.add_port(spec.id, PortKind.GUEST)
        self._set_sender(self.core.by_name[spec.id], _drop)
        try:
            self._open(spec, loop)
        except OSError as exc:
            if strict:
                raise
            self.log.info("guest waiting for its attachment", guest=spec.id, error=str(exc))
        self._mark_state()

    def _open(self, spec: GuestSpec, loop: asyncio.AbstractEventLoop) -> None:
        port = self.core.by_name[spec.id]
        port_obj = self.core.ports[port]
        assert port_obj is not None

        def on_frames(frames: list[bytes]) -> None:
            if not port_obj.up and not self._wake_standby(spec, frames):
                return
            self.ingest(port, frames)

        att: Attachment
        if spec.kind == "packet":
            if not interface_index(spec.target):
                raise OSError(f"interface {spec.target!r} is not in this namespace")
            sharing = [a for a in self.attachments.values() if isinstance(a, PacketAttachment)
                       and a.spec.target == spec.target and a.spec.mac]
            packet = PacketAttachment(spec, on_frames, self._att_error,
                                      source_only=bool(sharing))
            for other in sharing:
                other.source_only()
            packet.on_gone = lambda: self._on_gone(spec.id)
            att = packet
        elif spec.kind == "tap":
            att = TapAttachment(spec, on_frames, self._att_error)
        else:
            att = QemuAttachment(spec, on_frames, self._att_error, self._max_frame)
        if self._fast is not None and isinstance(att, FdAttachment):
            att.fast_reader = fastpath.compiled.GuestReader(
                att.fd, port, self._fast, on_frames, att.read_frames, READ_SIZE, BATCH).readable
        self._set_sender(port, att.send)
        self.attachments[spec.id] = att
        att.start(loop)
        if not spec.standby and spec.mac:
            self.core.set_port_up(spec.id, True)
            self._announce()
        self._mark_state()
        self.log.info("guest attached", guest=spec.id, mac=spec.mac, kind=spec.kind,
                      attachment=spec.target, standby=spec.standby)

    def _wake_standby(self, spec: GuestSpec, frames: list[bytes]) -> bool:
        """A standby guest goes live on its first frame (QEMU's announce after a move)."""
        mac = bytes.fromhex(spec.mac.replace(":", ""))
        if spec.id not in self.attachments or not any(f[16:22] == mac for f in frames):
            return False
        self.core.set_port_up(spec.id, True)
        self._announce()
        self._mark_state()
        self.log.info("standby guest is live", guest=spec.id)
        return True

    def _on_gone(self, guest_id: str) -> None:
        """Its interface left this namespace: the guest waits here, port down."""
        att = self.attachments.pop(guest_id, None)
        if att is not None:
            att.close()
            self.counters.inc("guest_detached")
        if guest_id in self.core.by_name:
            self.core.set_port_up(guest_id, False)
            self._set_sender(self.core.by_name[guest_id], _drop)
        self._announce()
        self._mark_state()
        self.log.info("guest interface gone, waiting", guest=guest_id)

    def _recheck_guests(self) -> None:
        """Interfaces changed: attach guests whose interface arrived, drop vanished ones."""
        loop = asyncio.get_running_loop()
        for spec in list(self.guest_specs.values()):
            if spec.kind != "packet":
                continue
            index = interface_index(spec.target)
            att = self.attachments.get(spec.id)
            if isinstance(att, PacketAttachment) and att.ifindex != index:
                self._on_gone(spec.id)
                att = None
            if att is None and index:
                try:
                    self._open(spec, loop)
                except OSError as exc:
                    self.error("guest_attach_failed", f"guest {spec.id}: {exc}")

    def detach_guest(self, guest_id: str) -> bool:
        """Release a guest entirely (a move's last step); False when it is not here."""
        if guest_id not in self.guest_specs:
            return False
        att = self.attachments.pop(guest_id, None)
        if att is not None:
            att.close()
        self._set_sender(self.core.by_name[guest_id], _drop)
        self.core.remove_port(guest_id)
        del self.guest_specs[guest_id]
        self._announce()
        self._mark_state()
        self.log.info("guest detached", guest=guest_id)
        return True

    def guest_command(self, cmd: pb.GuestCommand) -> None:
        """Apply control.guest.<host>; bad commands are counted and change nothing."""
        gid = cmd.guest.id
        if cmd.op == pb.GUEST_OP_DETACH:
            self.detach_guest(gid)
            self._mark_state()
            return
        if cmd.op != pb.GUEST_OP_ATTACH:
            self.error("guest_command_bad", f"guest command {cmd.command_id!r}: no op")
            return
        try:
            spec = guest_spec_of(cmd.guest)
        except ValueError as exc:
            self.error("guest_command_bad", f"guest command {cmd.command_id!r}: {exc}")
            return
        if gid == LAN_PORT or (gid not in self.guest_specs and gid in self.core.by_name):
            self.error("guest_command_bad", f"guest id {gid!r} names another port")
            return
        clash = [g for g in self.guest_specs.values() if g.mac == spec.mac and g.id != gid]
        if clash:
            self.error("guest_mac_conflict", f"guest {gid}: MAC {spec.mac} is {clash[0].id}'s")
            return
        current = self.guest_specs.get(gid)
        if current == spec:
            self._mark_state()
            return
        if current is not None:
            self.detach_guest(gid)
        self._attach(spec, asyncio.get_running_loop(), strict=False)

    def _live_macs(self) -> tuple[str, ...]:
        return tuple(sorted(g.mac for g in self.guest_specs.values() if self._is_live(g.id)))

    def _is_live(self, guest_id: str) -> bool:
        port = self.core.port(guest_id)
        return port is not None and port.up

    def _announce(self) -> None:
        """Tell the proxy over the star which guests live here, when that changed."""
        if self.s.is_proxy:
            return
        macs = self._live_macs()
        if macs == self._announced:
            return
        link = self.links.get(self.s.star_link_id)
        if link is None or not link.up:
            return  # the next handshake carries the set
        body = framing.announce_body(macs)
        udp = self._udp
        if link.udp and link.udp_addr is not None and udp is not None:
            udp.sendto(framing.datagram(MsgType.ANNOUNCE, body), link.udp_addr)
        elif link.conn is not None:
            link.conn.write(framing.encode(MsgType.ANNOUNCE, body))
        else:
            return
        self._announced = macs

    def _on_announce(self, link: Link | None, body: bytes) -> None:
        if link is None or not link.star or not self.s.is_proxy:
            self.error("link_bad_message", "announce on a link that is not a star spoke")
            return
        link.peer_macs = framing.parse_announce(body)
        if link.up:
            self.core.set_peer_macs(link.id, link.peer_macs)
        # The newest claim wins: a guest that moved is gone from its old spoke even
        # before that spoke's own announcement (which follows its release) arrives.
        claimed = set(link.peer_macs)
        for other in self.links.values():
            if other is not link and other.star and claimed & set(other.peer_macs):
                other.peer_macs = tuple(m for m in other.peer_macs if m not in claimed)
                if other.up:
                    self.core.set_peer_macs(other.id, other.peer_macs)
        self._mark_state()
        self.log.info("star peer announced guests", link=link.id, macs=list(link.peer_macs))

    def _mark_state(self) -> None:
        self._state_dirty = True
        self._sync_fast()
        waiter = self._state_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _tune(self, conn: StreamConn) -> None:
        """No Nagle, a deep write buffer, and the configured congestion control."""
        if conn.transport is None:
            return
        sock = conn.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.s.link_congestion:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION,
                                    self.s.link_congestion.encode())
                except OSError as exc:
                    self.error("link_congestion_refused",
                               f"congestion control {self.s.link_congestion!r}: {exc}")
        conn.transport.set_write_buffer_limits(high=4 << 20)

    def _att_error(self, counter: str, detail: str) -> None:
        self.error(counter, detail)

    def _set_sender(self, port: int, sender: Callable[[bytes], None]) -> None:
        while len(self.senders) <= port:
            self.senders.append(_drop)
        self.senders[port] = sender
        self._sync_fast()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for link in list(self.links.values()):
            self._remove_link(link.id)
        for att in self.attachments.values():
            att.close()
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        for conn in list(self._accepting):
            conn.close()
        for server in self._servers:
            server.close()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self.s.capture_socket:
            with contextlib.suppress(OSError):
                os.unlink(self.s.capture_socket)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------ data path

    def ingest(self, ingress: int, vframes: list[bytes]) -> None:
        """Route a batch of vframes from one port, then flush the links."""
        if self._captures:
            self._ingest_captured(ingress, vframes)
            return
        route = self.core.route
        senders = self.senders
        max_frame = self._max_frame + VNET_HDR_LEN
        for vf in vframes:
            n = len(vf)
            if n < MIN_VFRAME:
                self.error("runt", f"runt frame of {n - VNET_HDR_LEN} bytes from port {ingress}")
                continue
            if n > max_frame and (vf[1] == 0 or n > MAX_GSO_FRAME + VNET_HDR_LEN):
                self.error("oversized", f"oversized frame of {n - VNET_HDR_LEN} bytes"
                           f" from port {ingress} (MTU {self.s.mtu})")
                continue
            for out in route(ingress, vf):
                senders[out](vf)
        if self._dirty:
            self.flush()

    def _ingest_captured(self, ingress: int, vframes: list[bytes]) -> None:
        """ingest() with a capture running: mirror what enters or leaves a port."""
        caps = self._captures
        for vf in vframes:
            for conn in caps.get(ingress, ()):
                conn.mirror(vf)
        batch = list(vframes)
        captures, self._captures = self._captures, {}
        try:
            self.ingest(ingress, batch)
        finally:
            self._captures = captures
        # Egress: run the (pure, cached) decision again for the mirror only.
        if any(p != ingress for p in caps):
            for vf in vframes:
                if len(vf) < MIN_VFRAME:
                    continue
                key_out = self.core.peek(ingress, vf)
                for out in key_out:
                    for conn in caps.get(out, ()):
                        conn.mirror(vf)

    def start_capture(self, conn: CaptureConn, port_name: str) -> str | None:
        port = self.core.by_name.get(port_name)
        if port is None:
            names = ", ".join(sorted(self.core.by_name))
            return f"no port {port_name!r} on {self.s.host} (ports: {names})"
        conn.port = port
        self._captures.setdefault(port, []).append(conn)
        self._sync_fast()
        self.log.info("capture started", port=port_name)
        return None

    def stop_capture(self, conn: CaptureConn) -> None:
        conns = self._captures.get(conn.port, [])
        if conn in conns:
            conns.remove(conn)
            if not conns:
                del self._captures[conn.port]
                self._sync_fast()
            self.counters.inc("capture_dropped", conn.dropped)
            self.log.info("capture stopped", port=conn.port, dropped=conn.dropped)

    @property
    def fast_frames(self) -> int | None:
        """Frames the compiled fast path carried; None when it is off."""
        return None if self._fast is None else self._fast.fast_frames

    def _sync_fast(self) -> None:
        """Give the fast path the current tables: what each port is, where it writes.

        A port gets a sink only while its Python sender is the plain one (a live
        fd attachment, or an up TCP link with its socket's fd); captures turn the
        fast path off, since they mirror frames in Python.
        """
        switch = self._fast
        if switch is None:
            return
        core = self.core
        by_port = {link.port: link for link in self.links.values()}
        sinks: list[fastpath.Sink | None] = []
        for index, port in enumerate(core.ports):
            sink = None
            if port is not None and port.up:
                if port.kind is PortKind.GUEST:
                    att = self.attachments.get(port.name)
                    if (isinstance(att, FdAttachment) and att.fd >= 0
                            and index < len(self.senders) and self.senders[index] == att.send):
                        sink = fastpath.compiled.Sink(att.fd)
                else:
                    link = by_port.get(index)
                    conn = link.conn if link is not None else None
                    if (link is not None and isinstance(conn, fastpath.FastStreamConn)
                            and conn.transport is not None and conn.fd >= 0
                            and not conn.transport.is_closing()):
                        sink = fastpath.compiled.Sink(-1, conn.transport, link.stats, conn)
            sinks.append(sink)
        switch.configure(core.route_cache(), core.pairs.pairs, core.counters, tuple(sinks),
                         fastpath.port_flags(core), self._max_frame + VNET_HDR_LEN,
                         MAX_GSO_FRAME + VNET_HDR_LEN, not self._captures)
        fast_conns: set[StreamConn] = set()
        for link in self.links.values():
            conn = link.conn
            if link.up and isinstance(conn, fastpath.FastStreamConn) and conn.link is link:
                conn.go_fast(switch, link.port, link.stats, self)
                fast_conns.add(conn)
        for conn in self._fast_conns - fast_conns:
            assert isinstance(conn, fastpath.FastStreamConn)
            conn.go_fast()
        self._fast_conns = fast_conns

    def flush(self) -> None:
        for link in self._dirty:
            conn = link.conn
            if conn is not None and conn.transport is not None and link.pending:
                conn.write_many(link.pending)
            link.pending.clear()
            link.pending_bytes = 0
        self._dirty.clear()

    def _link_sender(self, link: Link) -> Callable[[bytes], None]:
        stats = link.stats
        limit = self.s.max_link_buffer
        dirty = self._dirty
        header = framing.frame_header

        def send_stream(vf: bytes) -> None:
            conn = link.conn
            if conn is None or not link.up or link.pending_bytes + conn.buffered() > limit:
                stats.drops += 1
                return
            link.pending.append(header(len(vf)))
            link.pending.append(vf)
            link.pending_bytes += len(vf) + 5
            stats.tx_frames += 1
            stats.tx_bytes += len(vf) - VNET_HDR_LEN
            dirty.add(link)

        def send_udp(vf: bytes) -> None:
            udp = self._udp
            if udp is None or link.udp_addr is None or not link.up:
                stats.drops += 1
                return
            try:
                udp.send_frame(vf, link.udp_addr)
            except OSError as exc:
                stats.drops += 1
                self.error("udp_send_error", f"link {link.id}: {exc} ({len(vf)} bytes)")
                return
            stats.tx_frames += 1
            stats.tx_bytes += len(vf) - VNET_HDR_LEN

        return send_udp if link.udp else send_stream

    # ------------------------------------------------------------ links

    def _new_link(self, spec: pb.LinkSpec, *, star: bool, dialer: bool) -> Link:
        port = self.core.add_link(spec.id, star=star, up=False)
        link = Link(spec=spec, port=port, star=star, dialer=dialer,
                    stats=LinkStats(keepalive_s=self.s.keepalive_s))
        self.links[spec.id] = link
        self._set_sender(port, self._link_sender(link))
        if dialer:
            if link.udp:
                try:
                    link.udp_addr = parse_address(spec.peer_address)
                    self.udp_peers[link.udp_addr] = link
                except ValueError as exc:
                    self.error("link_rejected", str(exc), link=spec.id)
            else:
                link.task = asyncio.get_running_loop().create_task(self._dial(link))
        self._mark_state()
        self.log.info("link added", link=spec.id, peer=spec.peer_host or spec.peer_address,
                      transport=pb.Transport.Name(spec.transport), dialer=dialer)
        return link

    def _remove_link(self, link_id: str) -> None:
        link = self.links.pop(link_id, None)
        if link is None:
            return
        link.removed = True
        if link.task is not None:
            link.task.cancel()
        if link.conn is not None:
            conn, link.conn = link.conn, None
            conn.close()
        if link.udp_addr is not None and self.udp_peers.get(link.udp_addr) is link:
            del self.udp_peers[link.udp_addr]
        self._dirty.discard(link)
        self.core.remove_port(link_id)
        self._set_sender(link.port, _drop)
        self._mark_state()
        self.log.info("link removed", link=link_id)

    def _set_up(self, link: Link, up: bool, now: float) -> None:
        if link.up == up:
            return
        link.up = up
        if up:
            link.up_since = time.time()
            link.stats.last_rx = now
            link.stats.next_ping_at = now
        else:
            link.reconnects += 1
        macs = link.peer_macs if (self.s.is_proxy and link.star) else ()
        self.core.set_link_up(link.id, up, macs, link.spec.peer_host)
        if up and link.star and not self.s.is_proxy and self._announced != self._live_macs():
            self._announce()  # the set changed during the handshake
        self._mark_state()
        (self.log.info if up else self.log.warning)(
            "link up" if up else "link down", link=link.id, peer=link.spec.peer_host)

    async def _dial(self, link: Link) -> None:
        """Connect, handshake, stay until the connection drops; again with backoff."""
        loop = asyncio.get_running_loop()
        tls = link.spec.transport == pb.TRANSPORT_TLS
        while not link.removed:
            conn: StreamConn | None = None
            try:
                host, port = parse_address(link.spec.peer_address)
                if tls and self._client_ssl is None:
                    raise ValueError(f"link {link.id} wants TLS but no --tls-cert is configured")
                _, proto = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: self._conn_class(self, True, link), host, port + 1 if tls else port,
                        ssl=self._client_ssl if tls else None,
                        server_hostname="vnet" if tls else None,
                    ),
                    self.s.handshake_s,
                )
                conn = proto
                self._tune(proto)
                proto.write(framing.encode(MsgType.HELLO, self._hello(link).encode()))
                if await asyncio.wait_for(proto.welcomed, self.s.handshake_s):
                    if link.conn is not proto:  # normally set on WELCOME already
                        link.conn = proto
                        self._set_up(link, True, time.monotonic())
                    link.backoff.reset()
                    await proto.closed
            except (OSError, TimeoutError, ValueError, ssl.SSLError) as exc:
                self.error("link_connect_failed", f"link {link.id} to {link.spec.peer_address}:"
                           f" {exc or type(exc).__name__}")
            finally:
                if conn is not None:
                    conn.close()
            if link.removed:
                break
            await asyncio.sleep(link.backoff.next_delay())

    def _hello(self, link: Link) -> Hello:
        """Star links announce this host's guests to the proxy; fast paths do not."""
        macs = self._live_macs() if link.star else ()
        if link.star:
            self._announced = macs
        return Hello(self.s.host, link.id, not link.star, macs)

    def _new_inbound(self) -> StreamConn:
        conn = self._conn_class(self, dialer=False)
        self._accepting[conn] = time.monotonic()
        return conn

    def _refuse(self, conn: StreamConn, counter: str, detail: str) -> None:
        self.error(counter, detail, peer=conn.peer)
        conn.write(framing.encode(MsgType.REFUSE, detail.encode()))
        conn.close()

    def _admit(self, hello: Hello, transport: Any) -> Link | str:
        """The link an inbound handshake binds to, or why it is refused."""
        if self.s.members and hello.host not in self.s.members:
            return f"link from {hello.host!r} refused: not in the membership"
        if hello.host == self.s.host:
            return f"link from {hello.host!r} refused: that is this host"
        if not hello.fast_path and not self.s.is_proxy:
            return f"star link from {hello.host!r} refused: {self.s.host} is not the proxy"
        link = self.links.get(hello.link_id)
        if link is not None:
            if link.spec.peer_host and link.spec.peer_host != hello.host:
                return (f"link {hello.link_id!r} belongs to {link.spec.peer_host!r},"
                        f" not {hello.host!r}")
            if link.dialer:
                return f"link {hello.link_id!r} is dialled from this side"
            return link
        spec = pb.LinkSpec(id=hello.link_id, peer_host=hello.host, transport=transport,
                           fast_path=hello.fast_path)
        return self._new_link(spec, star=not hello.fast_path, dialer=False)

    # LinkOwner callbacks --------------------------------------------------

    def on_stream_frames(self, conn: StreamConn, bodies: list[bytes]) -> None:
        """The FRAME messages of one read, routed as one batch (one flush)."""
        link = conn.link
        if link is None or link.conn is not conn:
            self._refuse(conn, "link_frame_before_hello", "frame before the handshake")
            return
        stats = link.stats
        stats.rx_frames += len(bodies)
        stats.rx_bytes += sum(map(len, bodies)) - VNET_HDR_LEN * len(bodies)
        stats.last_rx = self._clock  # traffic proves liveness as well as pongs do
        self.ingest(link.port, bodies)

    def on_stream_message(self, conn: StreamConn, kind: int, body: bytes) -> None:
        link = conn.link
        if kind == MsgType.FRAME:
            self.on_stream_frames(conn, [body])
            return
        now = time.monotonic()
        try:
            if kind == MsgType.PING:
                conn.write(framing.encode(MsgType.PONG, body))
                if link is not None:
                    link.stats.on_receive(now)
            elif kind == MsgType.PONG:
                if link is not None:
                    seq, _ = framing.parse_ping(body)
                    link.stats.on_pong(seq, now)
            elif kind == MsgType.ANNOUNCE and not conn.dialer:
                self._on_announce(link, body)
            elif kind == MsgType.HELLO and not conn.dialer and link is None:
                self._on_hello(conn, Hello.decode(body))
            elif kind == MsgType.WELCOME and conn.dialer and not conn.welcomed.done():
                peer = body.decode(errors="replace")
                if conn.link is not None and not conn.link.spec.peer_host:
                    conn.link.spec.peer_host = peer
                if conn.link is not None and not conn.link.removed:
                    # Up at once: the peer's first frames may follow in this same read,
                    # before the dialling task resumes.
                    conn.link.conn = conn
                    self._set_up(conn.link, True, now)
                conn.welcomed.set_result(True)
            elif kind == MsgType.REFUSE and conn.dialer:
                reason = body.decode(errors="replace")
                self.error("link_refused_by_peer", f"peer refused link {conn.peer}: {reason}")
                conn.close()
            else:
                self._refuse(conn, "link_bad_message", f"unexpected {MsgType(kind).name} message")
        except framing.BadStream as exc:
            self._refuse(conn, "link_" + exc.reason, exc.detail)

    def _on_hello(self, conn: StreamConn, hello: Hello) -> None:
        transport = pb.TRANSPORT_TLS if conn.transport is not None and \
            conn.transport.get_extra_info("ssl_object") is not None else pb.TRANSPORT_TCP
        admitted = self._admit(hello, transport)
        if isinstance(admitted, str):
            self._refuse(conn, "link_refused", admitted)
            return
        link = admitted
        self._accepting.pop(conn, None)
        if link.conn is not None and link.conn is not conn:
            old = link.conn
            link.conn = None
            self._set_up(link, False, time.monotonic())
            old.close()
        conn.link = link
        link.conn = conn
        link.peer_macs = hello.guest_macs
        self._tune(conn)
        conn.write(framing.encode(MsgType.WELCOME, self.s.host.encode()))
        self._set_up(link, True, time.monotonic())

    def on_stream_error(self, conn: StreamConn, reason: str, detail: str) -> None:
        link = conn.link.id if conn.link is not None else ""
        self.error(reason, f"garbage on link {link or conn.peer}: {detail}", peer=conn.peer)

    def on_stream_lost(self, conn: StreamConn) -> None:
        self._accepting.pop(conn, None)
        link = conn.link
        if link is None or link.conn is not conn or link.removed:
            return
        link.conn = None
        link.pending.clear()
        link.pending_bytes = 0
        self._set_up(link, False, time.monotonic())
        if not link.dialer and not link.star and link.id not in self.managed:
            self._remove_link(link.id)

    def on_fragments(self, batch: memoryview, size: int, addr: tuple[str, int]) -> None:
        """FRAGMENT pieces, one or a batch the kernel coalesced (UDP_GRO): joined into
        vframes and routed as one batch."""
        link = self.udp_peers.get(addr)
        if link is None or not link.up:
            self.error("udp_unknown_peer", f"frame pieces from {addr[0]}:{addr[1]}, no link up")
            return
        r = link.reassembler
        if r is None:
            r = link.reassembler = Reassembler(VNET_HDR_LEN + MAX_GSO_FRAME)
        lost, bad = r.lost, r.bad
        frames = r.feed_batch(batch, size)
        if r.bad != bad:
            self.error("udp_bad_fragment", f"link {link.id}: {r.bad - bad} malformed piece(s):"
                       f" {r.last_bad}")
        if r.lost != lost:
            link.stats.drops += r.lost - lost
            self.error("udp_fragments_lost", f"link {link.id}: a frame lost a piece on the way"
                       f" ({r.lost} so far)")
        if frames:
            link.stats.rx_frames += len(frames)
            link.stats.rx_bytes += sum(map(len, frames)) - VNET_HDR_LEN * len(frames)
            link.stats.last_rx = self._clock
            self.ingest(link.port, frames)

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            kind, body = framing.decode_datagram(data)
        except framing.BadStream as exc:
            self.error("udp_" + exc.reason, f"garbage datagram from {addr}: {exc.detail}")
            return
        if kind == MsgType.FRAGMENT:  # a lone piece (no coalescing on the way)
            self.on_fragments(memoryview(data), len(data), addr)
            return
        link = self.udp_peers.get(addr)
        if kind == MsgType.FRAME:
            if link is None or not link.up:
                self.error("udp_unknown_peer", f"frame from {addr[0]}:{addr[1]}, no link up")
                return
            link.stats.rx_frames += 1
            link.stats.rx_bytes += len(body) - VNET_HDR_LEN
            link.stats.last_rx = self._clock
            self.ingest(link.port, [body])
            return
        now = time.monotonic()
        udp = self._udp
        assert udp is not None
        try:
            if kind == MsgType.HELLO:
                hello = Hello.decode(body)
                admitted = self._admit(hello, pb.TRANSPORT_UDP)
                if isinstance(admitted, str):
                    self.error("link_refused", admitted, peer=f"{addr[0]}:{addr[1]}")
                    udp.sendto(framing.datagram(MsgType.REFUSE, admitted.encode()), addr)
                    return
                if admitted.udp_addr is not None and admitted.udp_addr != addr:
                    self.udp_peers.pop(admitted.udp_addr, None)
                admitted.udp_addr = addr
                admitted.peer_macs = hello.guest_macs
                self.udp_peers[addr] = admitted
                udp.sendto(framing.datagram(MsgType.WELCOME, self.s.host.encode()), addr)
                self._set_up(admitted, True, now)
            elif link is None:
                self.error("udp_unknown_peer", f"{MsgType(kind).name} from unknown {addr}")
            elif kind == MsgType.WELCOME:
                if not link.spec.peer_host:
                    link.spec.peer_host = body.decode(errors="replace")
                self._set_up(link, True, now)
            elif kind == MsgType.ANNOUNCE:
                self._on_announce(link, body)
            elif kind == MsgType.PING:
                link.stats.on_receive(now)
                udp.sendto(framing.datagram(MsgType.PONG, body), addr)
            elif kind == MsgType.PONG:
                seq, _ = framing.parse_ping(body)
                link.stats.on_pong(seq, now)
            elif kind == MsgType.REFUSE:
                self.error("link_refused_by_peer", f"peer refused UDP link {link.id}:"
                           f" {body.decode(errors='replace')}")
        except framing.BadStream as exc:
            self.error("udp_" + exc.reason, f"bad datagram from {addr}: {exc.detail}")

    # ------------------------------------------------------------ timers

    async def _timers(self) -> None:
        tick = min(0.1, self.s.keepalive_s / 2)
        while True:
            self.tick(time.monotonic())
            await asyncio.sleep(tick)

    def tick(self, now: float) -> None:
        """Keepalives, dead-link detection, UDP handshakes."""
        self._clock = now
        for conn, since in list(self._accepting.items()):
            if now - since > self.s.handshake_s:
                self._refuse(conn, "link_hello_timeout",
                             f"no handshake from {conn.peer} within {self.s.handshake_s:g}s")
                self._accepting.pop(conn, None)
        udp = self._udp
        for link in list(self.links.values()):
            if link.up:
                if not link.stats.alive(now):
                    self.error("link_timeout", f"link {link.id}: nothing received for"
                               f" {now - link.stats.last_rx:.1f}s, closing")
                    if link.udp:
                        self._set_up(link, False, now)
                    elif link.conn is not None:
                        link.conn.close()
                    continue
                seq = link.stats.ping_due(now)
                if seq is None:
                    continue
                body = framing.ping_body(seq, now)
                if link.udp and link.udp_addr is not None and udp:
                    udp.sendto(framing.datagram(MsgType.PING, body), link.udp_addr)
                elif link.conn is not None:
                    link.conn.write(framing.encode(MsgType.PING, body))
            elif (link.udp and link.dialer and link.udp_addr and udp
                  and now >= link.stats.next_ping_at):
                link.stats.next_ping_at = now + min(self.s.keepalive_s, 0.2)
                udp.sendto(framing.datagram(MsgType.HELLO, self._hello(link).encode()),
                                     link.udp_addr)

    # ------------------------------------------------------------ bus

    def link_views(self) -> list[messages.LinkView]:
        return [messages.LinkView(spec=link.spec, up=link.up, up_since=link.up_since,
                                  reconnects=link.reconnects, stats=link.stats)
                for link in self.links.values()]

    def state(self) -> pb.ForwarderState:
        return messages.forwarder_state(
            host=self.s.host, is_proxy=self.s.is_proxy, generation=self.generation,
            listen_address=self.s.listen, links=self.link_views(), rules=self.rule_messages,
            guests=[guest_pb(g) for g in self.guest_specs.values() if self._is_live(g.id)],
            waiting=[guest_pb(g) for g in self.guest_specs.values() if not self._is_live(g.id)],
            cpu=self.host_cpu,
        )

    def publish_frames(self, interval_s: float) -> None:
        assert self.bus is not None
        self.interval_index += 1
        body = frame_counts_wire(self.s.host, self.interval_index, interval_s,
                                 self.core.pairs.cut())
        self.bus.publish_wire(self._frames_topic, "frame_counts", body)

    def publish_links_and_state(self, interval_s: float, periodic: bool = True) -> None:
        assert self.bus is not None
        now = time.monotonic()
        if periodic:  # the throttled share is over one state interval
            self.host_cpu = self.cpu_watch.sample()
        self.bus.publish(topics.join(topics.LINKS, self.s.host),
                         messages.link_measurements(self.s.host, interval_s, self.link_views(),
                                                    now))
        self.bus.publish(topics.join(topics.STATE, self.s.host), self.state())
        self._state_dirty = False

    async def _publish_loop(self) -> None:
        frames_s = 1.0 / self.s.update_rate_hz
        loop = asyncio.get_running_loop()
        next_frames = next_state = loop.time()
        while True:
            # A timer may fire up to a clock tick early (uvloop counts in whole ms):
            # what is due within a tick is due now, or the loop spins until the tick.
            now = loop.time() + _TIMER_SLACK_S
            if now >= next_frames:
                self.publish_frames(frames_s)
                next_frames = max(next_frames + frames_s, now)
            if now >= next_state or self._state_dirty:
                periodic = now >= next_state
                self.publish_links_and_state(self.s.state_interval_s, periodic)
                if periodic:
                    next_state = max(next_state + self.s.state_interval_s, now)
            if not self._state_dirty:  # a changed state (a guest came or went) goes at once
                await self._sleep_unless_state(max(0.0, min(next_frames, next_state)
                                                   - loop.time()))

    async def _sleep_unless_state(self, wait_s: float) -> None:
        """Sleep, or less if the state changes: one future and one timer, where
        wait_for on an Event costs a task and a cancellation at every tick (20 Hz)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._state_waiter = waiter
        timer = loop.call_later(wait_s, _set_done, waiter)
        try:
            await waiter
        finally:
            self._state_waiter = None
            timer.cancel()

    async def _desired_loop(self) -> None:
        assert self.bus is not None
        prefix = topics.join(topics.DESIRED, self.s.host)
        guest_prefix = topics.join(topics.CONTROL_GUEST, self.s.host)
        while True:
            for msg in await self.bus.recv_batch(timeout=1.0):
                if isinstance(msg.payload, pb.DesiredState) and topics.exact(msg.topic, prefix):
                    self.apply(msg.payload)
                elif (isinstance(msg.payload, pb.GuestCommand)
                      and topics.exact(msg.topic, guest_prefix)):
                    self.guest_command(msg.payload)

    def apply(self, want: pb.DesiredState) -> desired.Operations | None:
        """Apply a desired state; refused or partly rejected input is counted."""
        try:
            ops = desired.plan(
                host=self.s.host, generation=self.generation, links=self.managed,
                rules=self.rule_messages, desired=want, guests=set(self.guest_specs),
                fixed_links={self.s.star_link_id} if not self.s.is_proxy else set(),
                members=self.s.members,
            )
        except desired.Refused as exc:
            self.error(exc.reason, exc.detail)
            return None
        for counter, detail in ops.rejected:
            self.error(counter, detail, generation=ops.generation)
        for link_id in [*ops.remove_links, *(s.id for s in ops.replace_links)]:
            self.managed.pop(link_id, None)
            self._remove_link(link_id)
        for spec in [*ops.add_links, *ops.replace_links]:
            self.managed[spec.id] = spec
            existing = self.links.get(spec.id)
            if existing is not None and not existing.dialer:
                existing.spec = spec  # the peer dialled first: adopt its connection
                continue
            dialer = bool(spec.peer_address) and self.s.host < spec.peer_host
            copy = pb.LinkSpec()
            copy.CopyFrom(spec)
            self._new_link(copy, star=False, dialer=dialer)
        if ops.rules_changed:
            self.core.set_rules(list(ops.rules))
            self.rule_messages = list(ops.rule_messages)
        if ops.generation != self.generation or not ops.empty:
            self.log.info("desired state applied", generation=ops.generation,
                          added=[s.id for s in ops.add_links], removed=list(ops.remove_links),
                          rules=len(ops.rules))
        self.generation = ops.generation
        self._mark_state()
        return ops


def guest_pb(g: GuestSpec) -> pb.Guest:
    return pb.Guest(id=g.id, mac=g.mac, ip=g.ip, kind=_KIND[g.kind], attachment=g.target,
                    standby=g.standby)


def guest_spec_of(g: pb.Guest) -> GuestSpec:
    """A runtime attachment from a control message: AF_PACKET or QEMU stream only."""
    if not g.id or not g.mac:
        raise ValueError("a guest needs an id and a MAC")
    kind = {pb.ATTACHMENT_PACKET: "packet", pb.ATTACHMENT_QEMU_STREAM: "qemu"}.get(g.kind)
    if kind is None:
        raise ValueError(f"guest {g.id}: attachment kind {pb.AttachmentKind.Name(g.kind)}"
                         " cannot attach at runtime (AF_PACKET or QEMU stream only)")
    if not g.attachment:
        raise ValueError(f"guest {g.id}: no attachment named")
    if kind == "qemu" and not g.attachment.startswith(("unix:", "tcp:")):
        raise ValueError(f"guest {g.id}: QEMU address {g.attachment!r} is not unix: or tcp:")
    return GuestSpec(id=g.id, mac=normalise_mac(g.mac), kind=kind, target=g.attachment,
                     ip=g.ip, standby=g.standby)


_TIMER_SLACK_S = 0.002


def _set_done(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _tls_contexts(s: ForwarderSettings) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """Mutual TLS with one shared CA (a self-signed cert works as its own CA)."""
    if not s.tls_cert:
        return None, None
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(s.tls_cert, s.tls_key or None)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_cert_chain(s.tls_cert, s.tls_key or None)
    ca = s.tls_ca or s.tls_cert
    client.load_verify_locations(ca)
    server.load_verify_locations(ca)
    server.verify_mode = ssl.CERT_REQUIRED
    client.check_hostname = False
    return server, client


def ready_line(fwd: Forwarder) -> str:
    """The line a launcher reads to know the forwarder is attached and listening."""
    return json.dumps({"ready": True, "host": fwd.s.host, "listen": fwd.s.listen,
                       "guests": sorted(fwd.attachments)})


async def serve(settings: ForwarderSettings, bus: BusClient | None, stop: asyncio.Event) -> int:
    fwd = Forwarder(settings, bus)
    if bus is not None:
        bus.subscribe(topics.join(topics.DESIRED, settings.host))
        bus.subscribe(topics.join(topics.CONTROL_GUEST, settings.host))
        try:
            await bus.ready(timeout=10.0)
        except TimeoutError as exc:
            fwd.log.error("bus not ready, forwarding anyway", error=str(exc))
    try:
        await fwd.start()
    except OSError as exc:
        fwd.log.error("forwarder cannot start", error=str(exc))
        await fwd.stop()
        return 1
    heart: asyncio.Task[None] | None = None
    if bus is not None:
        def extra() -> dict[str, int]:
            fast = {} if fwd.fast_frames is None else {"fastpath_frames": fwd.fast_frames}
            return {**fwd.counters.snapshot(), **fwd.core.counters, **fast}
        heart = asyncio.get_running_loop().create_task(bus.heartbeats(extra))
    print(ready_line(fwd), flush=True)
    sys.stdout.flush()
    fwd.log.info("forwarder running", listen=settings.listen, proxy=settings.is_proxy,
                 cgroups=fwd.cgroups)
    try:
        await stop.wait()
    finally:
        if heart is not None:
            heart.cancel()
            await asyncio.gather(heart, return_exceptions=True)
        await fwd.stop()
        fwd.log.info("forwarder stopped", **fwd.counters.snapshot())
    return 0
