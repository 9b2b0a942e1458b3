"""Overlay link I/O: stream connections (TCP, TLS) and the shared UDP endpoint.

These only move bytes: they decode the wire format (framing.py) and hand
each message to the daemon, which owns the meaning (handshake, membership,
keepalives, frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Protocol, cast

from services.bus.pb import vnet_pb2 as pb
from services.forwarder import fragments, framing
from services.forwarder.linkstate import Backoff, LinkStats


class LinkOwner(Protocol):
    def on_stream_message(self, conn: StreamConn, kind: int, body: bytes) -> None: ...
    def on_stream_frames(self, conn: StreamConn, bodies: list[bytes]) -> None: ...
    def on_stream_error(self, conn: StreamConn, reason: str, detail: str) -> None: ...
    def on_stream_lost(self, conn: StreamConn) -> None: ...
    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None: ...
    def on_fragments(self, batch: memoryview, size: int, addr: tuple[str, int]) -> None: ...


_IOV_MAX = 1024
_FRAME = int(framing.MsgType.FRAME)
# Per connection; a partial message is at most ~64 KB. Each read is capped at
# RECV_CHUNK and the buffer is compacted before it runs out, so reads cycle
# through 512 KB that stay in cache rather than a cold 1 MB.
RECV_BUFFER = 512 << 10
RECV_CHUNK = 128 << 10

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
_UDP_RECV = 65_535  # a datagram, or a batch the kernel coalesced (at most 64 KB)
_GRO_CMSG = socket.CMSG_SPACE(4)
_UDP_BATCH = 64
_FRAME_BYTE = bytes((framing.MsgType.FRAME,))
_FRAGMENT_KIND = int(framing.MsgType.FRAGMENT)


class StreamConn(asyncio.BufferedProtocol):
    """One TCP or TLS connection carrying link messages.

    Receives straight into one preallocated buffer (no allocation per read);
    only each message body is copied out.
    """

    def __init__(self, owner: LinkOwner, dialer: bool, link: Link | None = None) -> None:
        self.owner = owner
        self.dialer = dialer
        self.link = link  # bound after the handshake on the accepting side
        self.transport: asyncio.Transport | None = None
        self.decoder = framing.StreamDecoder()
        self.peer = ""
        self.closed = asyncio.get_running_loop().create_future()
        self.welcomed = asyncio.get_running_loop().create_future()
        self._make_buffer()
        self._fd = -1  # the plain TCP socket's fd for gathering writes

    def _make_buffer(self) -> None:
        self._buf = bytearray(RECV_BUFFER)
        self._start = 0  # first unparsed byte
        self._end = 0  # end of received bytes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        sock = transport.get_extra_info("socket")
        plain = transport.get_extra_info("ssl_object") is None
        self._fd = sock.fileno() if sock is not None and plain else -1

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self._buf) - self._end < RECV_CHUNK:
            pending = self._end - self._start
            self._buf[:pending] = self._buf[self._start : self._end]
            self._start, self._end = 0, pending
        return memoryview(self._buf)[self._end : self._end + RECV_CHUNK]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        try:
            messages, self._start = self.decoder.parse(self._buf, self._start, self._end,
                                                       copy_frames=False)
        except framing.BadStream as exc:
            self._bad_stream(exc.reason, exc.detail)
            return
        if self._start == self._end:
            self._start = self._end = 0
        self._deliver(messages)

    def _bad_stream(self, reason: str, detail: str) -> None:
        self.owner.on_stream_error(self, "link_" + reason, detail)
        self.close()

    def _deliver(self, messages: list[tuple[int, bytes]]) -> None:
        """Hand the messages of one read to the owner; consecutive FRAMEs as one batch."""
        frames: list[bytes] = []
        for kind, body in messages:
            if kind == _FRAME:
                frames.append(body)
                continue
            if frames:
                self.owner.on_stream_frames(self, frames)
                frames = []
                if self.transport is None:
                    return
            self.owner.on_stream_message(self, kind, body)
            if self.transport is None:
                return
        if frames:
            self.owner.on_stream_frames(self, frames)

    @property
    def pending(self) -> int:
        return self._end - self._start

    def data_received(self, data: bytes) -> None:
        """The plain-Protocol path (asyncio's TLS transport may use it)."""
        view = self.get_buffer(len(data))
        if len(data) > len(view):
            self.owner.on_stream_error(self, "link_bad_length", "message larger than the buffer")
            self.close()
            return
        view[: len(data)] = data
        view.release()
        self.buffer_updated(len(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.welcomed.done():
            self.welcomed.set_result(False)
        self.owner.on_stream_lost(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self._to_transport(self.transport, data)

    def _to_transport(self, t: asyncio.Transport, data: bytes) -> None:
        """Every write that goes through the transport comes here (FastStreamConn
        notes that bytes may be queued there, for its fast-path sink)."""
        t.write(data)

    def write_many(self, pieces: list[bytes]) -> None:
        """Send pieces with one gathering write (no join copy) when nothing is queued.

        Only on plain TCP with asyncio's buffer empty, so order is kept; what
        the kernel does not take goes to the transport's buffer as usual.
        """
        t = self.transport
        if t is None:
            return
        if self._fd < 0 or t.get_write_buffer_size() or t.is_closing():
            self._to_transport(t, b"".join(pieces))
            return
        try:
            sent = os.writev(self._fd, pieces[:_IOV_MAX])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._to_transport(t, b"".join(pieces))  # the transport sees and reports it
            return
        rest = b"".join(pieces)[sent:] if sent < sum(map(len, pieces)) else b""
        if rest:
            self._to_transport(t, rest)

    @property
    def fd(self) -> int:
        """The plain TCP socket's fd; -1 on TLS or before the connection is made."""
        return self._fd

    def buffered(self) -> int:
        return 0 if self.transport is None else self.transport.get_write_buffer_size()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class UdpEndpoint:
    """The forwarder's one UDP socket; every UDP link shares it.

    Its own reader, not an asyncio transport: recvmsg gives the segment size
    of datagrams the kernel coalesced (UDP_GRO), so a batch of FRAGMENT
    pieces comes in one call, and a frame too large for one datagram goes
    out as pieces in one sendmsg (UDP_SEGMENT). Where the kernel refuses
    UDP_SEGMENT, the pieces go one sendto each.
    """

    def __init__(self, owner: LinkOwner, sock: socket.socket, datagram_max: int) -> None:
        self.owner = owner
        self.sock = sock
        self.datagram_max = datagram_max
        self.segment_offload = True
        self._next_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(_UDP_BATCH):
            try:
                data, ancillary, _, addr = self.sock.recvmsg(_UDP_RECV, _GRO_CMSG)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error from an earlier send: liveness is the keepalives'
                continue
            peer = (str(addr[0]), int(addr[1]))
            size = 0
            for level, kind, value in ancillary:
                if level == SOL_UDP and kind == UDP_GRO:  # an int: the segment size
                    size = int.from_bytes(value, sys.byteorder)
            if not size or size >= len(data):
                self.owner.on_datagram(data, peer)
                continue
            if data[0] == _FRAGMENT_KIND:  # a frame's pieces, as a rule: one batch
                self.owner.on_fragments(memoryview(data), size, peer)
                continue
            for start in range(0, len(data), size):
                self.owner.on_datagram(data[start: start + size], peer)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        """One control datagram; a refusal (no route yet, buffer full) is left to the
        keepalives and handshake retries, as asyncio's transport left it."""
        with contextlib.suppress(OSError):
            self.sock.sendto(data, addr)

    def send_frame(self, vframe: bytes, addr: tuple[str, int]) -> None:
        """A vframe as one FRAME datagram, or as FRAGMENT pieces when it does not fit.

        Raises OSError when the kernel refuses (the caller counts the drop)."""
        if 1 + len(vframe) <= self.datagram_max:
            self.sock.sendto(_FRAME_BYTE + vframe, addr)
            return
        buffer = fragments.datagrams(self._next_id, vframe, self.datagram_max)
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        if self.segment_offload:
            cmsg = [(SOL_UDP, UDP_SEGMENT, self.datagram_max.to_bytes(2, sys.byteorder))]
            try:
                self.sock.sendmsg([buffer], cmsg, 0, addr)
                return
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    pass  # pieces and headers over 64 KB (a frame near the GSO limit): one by one
                elif exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.EIO):
                    self.segment_offload = False  # this kernel or path cannot: one call each
                else:
                    raise
        for start in range(0, len(buffer), self.datagram_max):
            self.sock.sendto(buffer[start: start + self.datagram_max], addr)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()


@dataclass(eq=False)
class Link:
    """One overlay link: its spec, its port in the core, its connection and counters."""

    spec: pb.LinkSpec
    port: int
    star: bool
    dialer: bool
    stats: LinkStats
    conn: StreamConn | None = None
    udp_addr: tuple[str, int] | None = None
    up: bool = False
    up_since: float = 0.0
    reconnects: int = 0
    peer_macs: tuple[str, ...] = ()
    backoff: Backoff = field(default_factory=Backoff)
    reassembler: fragments.Reassembler | None = None  # UDP: FRAGMENT pieces in flight
    task: asyncio.Task[None] | None = None
    pending: list[bytes] = field(default_factory=list)
    pending_bytes: int = 0
    removed: bool = False

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def udp(self) -> bool:
        return self.spec.transport == pb.TRANSPORT_UDP
