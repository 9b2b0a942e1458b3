"""Capture: a forwarder mirrors what one of its ports sees to a local client.

The forwarder listens on a UNIX socket (--capture-socket). A client sends a
port name (a guest id, a link id, or "lan") and a newline; from then on the
forwarder copies every frame that enters or leaves that port to it, as
QEMU-stream records (4-byte big-endian length + frame). A slow client loses
frames (counted), never slows the data path. `vnet capture` is the client
and writes a pcap with scapy.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Protocol, cast

from services.forwarder import framing

MAX_CAPTURE_BUFFER = 4 << 20


class CaptureOwner(Protocol):
    def start_capture(self, conn: CaptureConn, port_name: str) -> str | None: ...
    def stop_capture(self, conn: CaptureConn) -> None: ...


class CaptureConn(asyncio.Protocol):
    """The forwarder's side of one capture client."""

    def __init__(self, owner: CaptureOwner) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.port = -1
        self.dropped = 0
        self._line = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.port >= 0:
            return  # the client only ever sends its one request
        self._line += data
        if b"\n" not in self._line:
            if len(self._line) > 256 and self.transport is not None:
                self.transport.close()
            return
        name = self._line.split(b"\n", 1)[0].decode(errors="replace").strip()
        problem = self.owner.start_capture(self, name)
        if problem is not None and self.transport is not None:
            self.transport.write(f"error: {problem}\n".encode())
            self.transport.close()
        elif self.transport is not None:
            self.transport.write(b"ok\n")

    def mirror(self, vframe: bytes) -> None:
        t = self.transport
        if t is None:
            return
        if t.get_write_buffer_size() > MAX_CAPTURE_BUFFER:
            self.dropped += 1
            return
        t.write(framing.qemu_encode(vframe[10:]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.owner.stop_capture(self)


def run_client(path: str, port_name: str, out: str, count: int, duration_s: float) -> int:
    """Connect, ask for a port and write what comes to a pcap; return frames written."""
    from scapy.layers.l2 import Ether  # noqa: F401  (registers the Ethernet link type)
    from scapy.utils import PcapWriter

    decoder = framing.QemuDecoder(framing.MAX_QEMU_LENGTH)
    written = 0
    deadline = time.monotonic() + duration_s if duration_s > 0 else None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(port_name.encode() + b"\n")
        head = b""
        while not head.endswith(b"\n"):
            chunk = s.recv(1)
            if not chunk:
                raise ConnectionError("forwarder closed the capture socket")
            head += chunk
        if head != b"ok\n":
            raise ValueError(head.decode(errors="replace").strip())
        writer = PcapWriter(out, linktype=1, sync=True)
        try:
            while count <= 0 or written < count:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    s.settimeout(left)
                try:
                    data = s.recv(1 << 16)
                except TimeoutError:
                    break
                if not data:
                    break
                for frame in decoder.feed(data):
                    writer.write(frame)
                    written += 1
                    if 0 < count <= written:
                        break
        finally:
            writer.close()
    return written
