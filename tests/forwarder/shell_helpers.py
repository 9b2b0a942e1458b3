"""In-process forwarders with fake QEMU guests: the shell tested without root.

A fake QEMU is a UNIX stream server speaking QEMU's netdev stream protocol
(4-byte big-endian length + frame); the forwarder connects to it as QEMU's
client, exactly as with a real `-netdev stream,server=on`.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

from services.forwarder.config import ForwarderSettings, GuestSpec
from services.forwarder.daemon import Forwarder
from services.forwarder.ethernet import mac_from_str


def free_port() -> int:
    """A port free for TCP and UDP, with port+1 free for TLS."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port > 65000:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
                u.bind(("127.0.0.1", port))
                t.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair found")


def eth(dst: str, src: str, payload: bytes = b"p" * 46, ethertype: int = 0x88B5) -> bytes:
    return mac_from_str(dst) + mac_from_str(src) + struct.pack("!H", ethertype) + payload


class FakeQemu:
    """QEMU's side of a stream netdev: a server the forwarder connects to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._client, str(self.path))

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.connected.set()
        try:
            while True:
                (n,) = struct.unpack("!I", await reader.readexactly(4))
                await self.received.put(await reader.readexactly(n))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def send(self, frame: bytes) -> None:
        assert self.writer is not None
        self.writer.write(struct.pack("!I", len(frame)) + frame)

    def send_raw(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)

    async def expect(self, predicate: Callable[[bytes], bool], timeout: float = 5.0) -> bytes:
        """The next received frame matching predicate (others are skipped)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = await asyncio.wait_for(self.received.get(), left)
            except TimeoutError:
                break
            if predicate(frame):
                return frame
        raise AssertionError(f"no matching frame at {self.path} within {timeout}s")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def settings(host: str, port: int, guests: list[GuestSpec], proxy_port: int | None,
             **kw: object) -> ForwarderSettings:
    return ForwarderSettings(
        host=host, listen=f"127.0.0.1:{port}", is_proxy=proxy_port is None,
        proxy_address="" if proxy_port is None else f"127.0.0.1:{proxy_port}",
        guests=tuple(guests), keepalive_s=0.1, handshake_s=1.0, **kw,  # type: ignore[arg-type]
    )


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def link_up(fwd: Forwarder, link_id: str) -> bool:
    link = fwd.links.get(link_id)
    return link is not None and link.up
