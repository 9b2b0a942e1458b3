"""Delay relay: joins pairs of interfaces in the testbed's wan namespace, frame for
frame, each held for the WAN link's one-way delay (this kernel has no netem).

Each interface is read and written with an AF_PACKET socket carrying the virtio-net
header (PACKET_VNET_HDR), so one read moves a whole 64 KB GSO frame with its
checksum state intact and the relay costs little per byte. Frames go into one
`DelayLine` (a priority queue on release time) and one selector loop sends each
when due; the loop waits with select(2), whose timeout is in microseconds (epoll's
is in milliseconds), so a frame leaves ~0.1-0.2 ms late (wake-up and Python), never early.

Run by the testbed as ``python -m services.testbed.relay --link IF_A IF_B DELAY_MS ...``
inside the wan namespace; prints one JSON ready line, and its counters on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from dataclasses import asdict

from services.testbed.delayline import DEFAULT_CAPACITY_BYTES, DelayLine

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
RECV_BYTES = 65536 + 64
BATCH = 256
RCVBUF_BYTES = 8 * 1024 * 1024
RELAY_NICE = -10


def open_port(ifname: str) -> socket.socket:
    # Protocol 0: nothing comes in until bind() names the interface (created with
    # ETH_P_ALL it would queue frames of every interface in the namespace until then).
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
    s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, RCVBUF_BYTES)
    s.bind((ifname, ETH_P_ALL))
    mreq = struct.pack("iHH8s", socket.if_nametoindex(ifname), PACKET_MR_PROMISC, 0, b"")
    s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    s.setblocking(False)
    return s


def run(links: list[tuple[str, str, float]], capacity_bytes: int) -> dict[str, int]:
    ports: list[socket.socket] = []
    peer: list[int] = []
    delay_ns: list[int] = []
    for if_a, if_b, delay_ms in links:
        a, b = len(ports), len(ports) + 1
        ports += [open_port(if_a), open_port(if_b)]
        peer += [b, a]
        delay_ns += [int(delay_ms * 1e6)] * 2
    line = DelayLine(capacity_bytes)
    send_dropped = 0
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # select(2) takes microseconds where epoll takes milliseconds: frames leave on time.
    sel = selectors.SelectSelector()
    for i, s in enumerate(ports):
        sel.register(s, selectors.EVENT_READ, i)
    sel.register(wake_r, selectors.EVENT_READ, -1)
    print(json.dumps({"ready": True, "ports": [p.getsockname()[0] for p in ports]}), flush=True)

    while not stop:
        nxt = line.next_release_ns()
        timeout = None if nxt is None else max(0.0, (nxt - time.monotonic_ns()) / 1e9)
        for key, _ in sel.select(timeout):
            i = key.data
            if i < 0:
                wake_r.recv(64)
                continue
            sock, out, delay = ports[i], peer[i], delay_ns[i]
            for _n in range(BATCH):
                try:
                    frame = sock.recv(RECV_BYTES)
                except BlockingIOError:
                    break
                # Timed after the read: a frame is never released early.
                line.push(time.monotonic_ns(), delay, out, frame)
        for port, frame in line.pop_due(time.monotonic_ns()):
            try:
                ports[port].send(frame)
            except OSError:  # ENOBUFS / EAGAIN: the far side's queue is full
                send_dropped += 1
    for s in ports:
        s.close()
    return {**asdict(line.counters), "frames_dropped_send": send_dropped}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.testbed.relay", description=__doc__)
    p.add_argument("--link", nargs=3, action="append", metavar=("IF_A", "IF_B", "DELAY_MS"),
                   required=True, help="join IF_A and IF_B, holding frames DELAY_MS each way")
    p.add_argument("--capacity-bytes", type=int, default=DEFAULT_CAPACITY_BYTES,
                   help="bytes held at most over all links; beyond it frames are dropped")
    p.add_argument("--nice", type=int, default=RELAY_NICE,
                   help="scheduling niceness (negative: the relay is the network and should "
                        "not queue behind the workloads it carries)")
    args = p.parse_args(argv)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    except PermissionError:
        print(f"relay: cannot set niceness {args.nice} (not root); running at default",
              file=sys.stderr)
    links = [(a, b, float(d)) for a, b, d in args.link]
    counters = run(links, args.capacity_bytes)
    print(json.dumps({"stopped": True, **counters}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
