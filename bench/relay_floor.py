"""The least a Python forwarder can do: one guest interface relayed over one TCP connection.

A reference path for the forwarder benchmark, not part of vnet: AF_PACKET
with PACKET_VNET_HDR (so GSO frames and partial checksums pass, as in vnet)
into a length-prefixed TCP stream, one asyncio loop, `add_reader` callbacks,
`recv_into` preallocated buffers, no rules, no counting, no bad-input
checks. Whatever per-frame cost and wake-up latency it shows is the floor
for any forwarder written in Python on the machine, and so tells what part
of vnet's figures is its own code and what part is the language.

Run inside a host namespace, one end listening, the other connecting:
    python -m bench.relay_floor IFNAME listen|connect ADDR PORT
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import sys
import time

from services.forwarder.attach import READ_SIZE
from services.testbed.relay import open_port

MAX_VFRAME = READ_SIZE
LENGTH = struct.Struct("!I")


def tcp_socket(mode: str, addr: str, port: int, timeout_s: float = 20.0) -> socket.socket:
    if mode == "listen":
        with socket.socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((addr, port))
            listener.listen(1)
            sock, _ = listener.accept()
    else:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                sock = socket.create_connection((addr, port), timeout=1.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


class Relay:
    """Frames from the interface go out as [length][vframe]; the stream comes back in."""

    def __init__(self, packet: socket.socket, tcp: socket.socket,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.packet, self.tcp, self.loop = packet, tcp, loop
        self.out = bytearray(LENGTH.size + MAX_VFRAME)
        self.out_view = memoryview(self.out)
        self.inbuf = bytearray(4 << 20)
        self.in_view = memoryview(self.inbuf)
        self.have = 0

    def on_packet(self) -> None:
        while True:
            try:
                n = self.packet.recv_into(self.out_view[LENGTH.size:])
            except BlockingIOError:
                return
            LENGTH.pack_into(self.out, 0, n)
            self.tcp.settimeout(5.0)  # a reference, not a product: block rather than buffer
            self.tcp.sendall(self.out_view[: LENGTH.size + n])
            self.tcp.setblocking(False)

    def on_stream(self) -> None:
        try:
            n = self.tcp.recv_into(self.in_view[self.have:])
        except BlockingIOError:
            return
        except ConnectionError:  # the other end stopped first
            n = 0
        if not n:
            self.loop.stop()
            return
        self.have += n
        off = 0
        while self.have - off >= LENGTH.size:
            (length,) = LENGTH.unpack_from(self.inbuf, off)
            end = off + LENGTH.size + length
            if end > self.have:
                break
            with contextlib.suppress(BlockingIOError):  # guest queue full: dropped, as by a NIC
                self.packet.send(self.in_view[off + LENGTH.size: end])
            off = end
        if off:
            self.inbuf[: self.have - off] = self.inbuf[off: self.have]
            self.have -= off


def main(argv: list[str]) -> int:
    ifname, mode, addr, port = argv[0], argv[1], argv[2], int(argv[3])
    packet = open_port(ifname)
    tcp = tcp_socket(mode, addr, port)
    loop = asyncio.new_event_loop()
    relay = Relay(packet, tcp, loop)
    loop.add_reader(packet.fileno(), relay.on_packet)
    loop.add_reader(tcp.fileno(), relay.on_stream)
    try:
        loop.run_forever()
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
