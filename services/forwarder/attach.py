"""Guest attachments (I/O): AF_PACKET on an interface, TAP, QEMU stream netdev.

Each hands vframes (vnet header + frame) to a callback in batches and
writes vframes back. AF_PACKET and TAP use the kernel's virtio-net header so
one read carries a whole GSO frame with a partial checksum the receiving
kernel completes: guest offloads stay on and guest TCP works. QEMU's stream
carries plain frames: headers are added on the way in and stripped (with
the checksum completed in software) on the way out; a GSO frame cannot go
to QEMU and is dropped and counted.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import os
import socket
import struct
import subprocess
from collections.abc import Callable
from typing import Any, Protocol, cast

from services.bus import log as buslog
from services.forwarder import framing
from services.forwarder.config import GuestSpec, parse_address
from services.forwarder.ethernet import from_plain, to_plain
from services.forwarder.linkstate import Backoff

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
ETH_P_ALL = 0x0003

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08

SO_ATTACH_FILTER = 26
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1

READ_SIZE = 65_536 + 64
BATCH = 64

FramesCallback = Callable[[list[bytes]], None]
ErrorCallback = Callable[[str, str], None]  # (counter, detail)


class Attachment(Protocol):
    spec: GuestSpec

    def start(self, loop: asyncio.AbstractEventLoop) -> None: ...
    def send(self, vframe: bytes) -> None: ...
    def close(self) -> None: ...


class FdAttachment:
    """Shared reader for fd-based attachments (AF_PACKET socket, TAP): what the
    compiled fast path can read from and write to directly."""

    def __init__(self, spec: GuestSpec, on_frames: FramesCallback, on_error: ErrorCallback) -> None:
        self.spec = spec
        self.on_frames = on_frames
        self.on_error = on_error
        self._loop: asyncio.AbstractEventLoop | None = None
        self.fd = -1
        self.on_gone: Callable[[], None] | None = None  # the device vanished (moved away)
        # The compiled reader (fastpath.py), which falls back on read_frames.
        self.fast_reader: Callable[[], None] | None = None

    def _read_one(self) -> bytes:
        raise NotImplementedError

    def read_frames(self) -> None:
        """Read up to a batch of frames and hand them on; the Python reader."""
        frames: list[bytes] = []
        for _ in range(BATCH):
            try:
                frames.append(self._read_one())
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.on_error("guest_read_error", f"guest {self.spec.id}: {exc}")
                if self._gone(exc) and self._loop is not None:
                    # The interface is gone: stop polling a dead fd instead of spinning.
                    self._loop.remove_reader(self.fd)
                    if self.on_gone is not None:
                        self.on_gone()
                    else:
                        self.on_error("guest_detached", f"guest {self.spec.id}: interface gone")
                break
        if frames:
            self.on_frames(frames)

    def _gone(self, exc: OSError) -> bool:
        return exc.errno in (errno.ENODEV, errno.ENXIO)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.fd, self.fast_reader or self.read_frames)

    def close(self) -> None:
        if self._loop is not None and self.fd >= 0:
            self._loop.remove_reader(self.fd)
        self._loop = None


class PacketAttachment(FdAttachment):
    """An existing interface (the host side of a guest's veth), read with AF_PACKET."""

    def __init__(self, spec: GuestSpec, on_frames: FramesCallback, on_error: ErrorCallback,
                 source_only: bool = False) -> None:
        super().__init__(spec, on_frames, on_error)
        # Protocol 0: no frame comes in until bind() names the interface and
        # ETH_P_ALL; created with ETH_P_ALL, it would queue frames of every interface
        # in the namespace (and before the source filter) until then.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            big_buffers(sock)
            ifindex = socket.if_nametoindex(spec.target)
            set_up(sock, spec.target)  # a device moved in from another namespace arrives down
            if source_only and spec.mac:
                attach_source_filter(sock, spec.mac)
            sock.bind((spec.target, ETH_P_ALL))
            mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise OSError(
                f"cannot attach guest {spec.id} to interface {spec.target!r}: {exc}"
            ) from exc
        self.sock = sock
        self.ifindex = ifindex
        self.fd = sock.fileno()
        self._recv = sock.recv
        self._send = sock.send

    def _read_one(self) -> bytes:
        return self._recv(READ_SIZE)

    def source_only(self) -> None:
        """From now on only this guest's frames: another guest shares the interface
        (a container host's segment after a move); alone, a guest's frames are all its."""
        attach_source_filter(self.sock, self.spec.mac)

    def _gone(self, exc: OSError) -> bool:
        """ENETDOWN also means "set down" (it comes back); only a vanished device is gone."""
        try:
            socket.if_nametoindex(self.spec.target)
        except OSError:
            return True
        return super()._gone(exc)

    def send(self, vframe: bytes) -> None:
        try:
            self._send(vframe)
        except (BlockingIOError, InterruptedError):
            self.on_error("guest_tx_dropped", f"guest {self.spec.id}: socket buffer full")
        except OSError as exc:
            self.on_error("guest_write_error", f"guest {self.spec.id}: {exc}")

    def close(self) -> None:
        super().close()
        self.sock.close()


def source_filter(mac: str) -> bytes:
    """Classic BPF accepting only frames whose source MAC is mac (bytes 6-11)."""
    raw = bytes.fromhex(mac.replace(":", ""))
    hi, lo = int.from_bytes(raw[:4], "big"), int.from_bytes(raw[4:], "big")
    ld_w, ld_h, jeq, ret = 0x20, 0x28, 0x15, 0x06  # BPF_LD|W|ABS, LD|H|ABS, JMP|JEQ|K, RET|K
    program = [(ld_w, 0, 0, 6), (jeq, 0, 3, hi), (ld_h, 0, 0, 10), (jeq, 0, 1, lo),
               (ret, 0, 0, 0x40000), (ret, 0, 0, 0)]
    return b"".join(struct.pack("HBBI", *insn) for insn in program)


def attach_source_filter(sock: socket.socket, mac: str) -> None:
    code = ctypes.create_string_buffer(source_filter(mac))
    fprog = struct.pack("HxxxxxxQ", len(code.raw) // 8, ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def set_up(sock: socket.socket, ifname: str) -> None:
    """Bring an interface up (SIOCGIFFLAGS / SIOCSIFFLAGS) if it is down."""
    req = struct.pack("16sH", ifname.encode(), 0)
    flags = struct.unpack("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, req)[:18])[1]
    if not flags & IFF_UP:
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH", ifname.encode(), flags | IFF_UP))


def interface_index(ifname: str) -> int:
    """The interface's index in this namespace, 0 when it is not here."""
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return 0


class LinkWatcher:
    """Wakes the forwarder when any interface appears, goes or changes (rtnetlink)."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.on_change = on_change
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, RTMGRP_LINK))
        self.sock.setblocking(False)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                self.sock.recv(65_536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ENOBUFS: events were lost; a re-check covers them
                break
        self.on_change()

    def close(self) -> None:
        if self._loop is not None and self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
        self._loop = None
        self.sock.close()


def big_buffers(sock: socket.socket | Any, size: int = 4 << 20) -> None:
    """Room for dozens of 64 KB GSO frames; FORCE (root) passes rmem_max/wmem_max."""
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_*BUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


class TapAttachment(FdAttachment):
    """A TAP device created here; with netns= it is moved into the guest's namespace."""

    def __init__(self, spec: GuestSpec, on_frames: FramesCallback, on_error: ErrorCallback) -> None:
        super().__init__(spec, on_frames, on_error)
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        try:
            ifr = struct.pack("16sH", spec.target.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", 10))
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
            if spec.netns:
                _move_to_netns(spec.target, spec.netns)
        except OSError as exc:
            os.close(fd)
            raise OSError(
                f"cannot create TAP {spec.target!r} for guest {spec.id}: {exc}"
            ) from exc
        self.fd = fd

    def _read_one(self) -> bytes:
        return os.read(self.fd, READ_SIZE)

    def send(self, vframe: bytes) -> None:
        try:
            os.write(self.fd, vframe)
        except (BlockingIOError, InterruptedError):
            self.on_error("guest_tx_dropped", f"guest {self.spec.id}: TAP queue full")
        except OSError as exc:
            self.on_error("guest_write_error", f"guest {self.spec.id}: {exc}")

    def close(self) -> None:
        super().close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _move_to_netns(ifname: str, netns: str) -> None:
    """Move a device to another namespace (once, at attach time; `ip` because
    pyroute2's IPRoute cannot run inside an already running asyncio loop)."""
    r = subprocess.run(["ip", "link", "set", "dev", ifname, "netns", netns],
                       capture_output=True, text=True, timeout=10, check=False)
    if r.returncode != 0:
        raise OSError(f"moving {ifname!r} to namespace {netns!r} failed: {r.stderr.strip()}")


class QemuAttachment(asyncio.Protocol):
    """QEMU's stream netdev, QEMU the server; this side reconnects with backoff."""

    def __init__(self, spec: GuestSpec, on_frames: FramesCallback, on_error: ErrorCallback,
                 max_frame: int) -> None:
        self.spec = spec
        self.on_frames = on_frames
        self.on_error = on_error
        self.max_frame = max_frame
        self.backoff = Backoff(base_s=0.1, cap_s=2.0)
        self.connected = False
        self.reconnects = 0
        self._transport: asyncio.Transport | None = None
        self._decoder = framing.QemuDecoder(framing.MAX_QEMU_LENGTH)
        self._task: asyncio.Task[None] | None = None
        self._lost: asyncio.Event = asyncio.Event()
        self._closing = False
        self._log = buslog.get(component="qemu", guest=spec.id)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        target = self.spec.target
        while not self._closing:
            try:
                if target.startswith("unix:"):
                    await loop.create_unix_connection(lambda: self, target[5:])
                else:
                    host, port = parse_address(target[4:])
                    await loop.create_connection(lambda: self, host, port)
            except OSError as exc:
                delay = self.backoff.next_delay()
                self._log.warning("QEMU socket not reachable", target=target, error=str(exc),
                                  retry_s=delay)
                await asyncio.sleep(delay)
                continue
            self.backoff.reset()
            await self._lost.wait()
            self._lost.clear()
            if not self._closing:
                self.reconnects += 1
                await asyncio.sleep(self.backoff.next_delay())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._transport = transport
        self._decoder = framing.QemuDecoder(framing.MAX_QEMU_LENGTH)
        self.connected = True
        self._log.info("QEMU connected", target=self.spec.target)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except framing.BadStream as exc:
            self.on_error("qemu_" + exc.reason, f"guest {self.spec.id}: {exc.detail}")
            if self._transport is not None:
                self._transport.close()
            return
        good: list[bytes] = []
        for f in frames:
            if len(f) < framing.MIN_QEMU_FRAME:
                self.on_error("runt", f"guest {self.spec.id}: QEMU frame of {len(f)} bytes")
            else:
                good.append(from_plain(f))
        if good:
            self.on_frames(good)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connected = False
        self._transport = None
        self._log.warning("QEMU connection lost", target=self.spec.target,
                          error=str(exc) if exc else "")
        self._lost.set()

    def send(self, vframe: bytes) -> None:
        if self._transport is None:
            self.on_error("guest_tx_dropped", f"guest {self.spec.id}: QEMU not connected")
            return
        plain = to_plain(vframe)
        if plain is None:
            self.on_error("gso_to_plain_sink",
                          f"guest {self.spec.id}: GSO frame cannot go to QEMU's stream")
            return
        self._transport.write(framing.qemu_encode(plain))

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()
        if self._task is not None:
            self._task.cancel()
