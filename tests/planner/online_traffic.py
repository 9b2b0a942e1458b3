"""UDP traffic for the planner's online tests, run inside a guest's namespace.

``sink``: bind the test port and discard what arrives (so the kernel answers
no ICMP port-unreachable and the flow stays one-way).
``flow --to IP --pps N --size B``: send N datagrams of B payload bytes a
second to IP until killed, paced in 10 ms ticks (a stall is not made up for
in a burst larger than one tenth of a second's worth).

Both print "ready" once their socket exists.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import time

PORT = 9400
TICK_S = 0.01


def sink() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", PORT))
    print("ready", flush=True)
    while True:
        sock.recv(65536)


def flow(to: str, pps: float, size: int) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    payload = b"v" * size
    target = (to, PORT)
    print("ready", flush=True)
    start = time.monotonic()
    sent = 0
    burst = max(1, int(pps / 10))
    while True:
        due = int((time.monotonic() - start) * pps) - sent
        if due > burst:  # behind (a stall): skip what was missed
            sent += due - burst
            due = burst
        for _ in range(due):
            # A full buffer drops the datagram: UDP may, the tests count links.
            with contextlib.suppress(OSError):
                sock.sendto(payload, target)
            sent += 1
        time.sleep(TICK_S)


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    sub.add_parser("sink")
    f = sub.add_parser("flow")
    f.add_argument("--to", required=True, help="destination guest IP")
    f.add_argument("--pps", type=float, required=True, help="datagrams per second")
    f.add_argument("--size", type=int, default=1000, help="payload bytes per datagram")
    args = p.parse_args()
    if args.mode == "sink":
        return sink()
    return flow(args.to, args.pps, args.size)


if __name__ == "__main__":
    sys.exit(main())
