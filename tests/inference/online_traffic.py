"""A guest's application traffic for the online inference tests, run inside its namespace.

Sends UDP datagrams at a steady rate to each of its peers (the application's
edges), receives and discards what its peers send (so the kernel answers no
ICMP), and adds background chatter well under the pruning threshold: small
datagrams to one non-peer guest and to the subnet's broadcast address.

Commands on stdin, one per line (answered with "ok" once applied):
    peers IP IP ...     the peers from now on (none: silent)
    chatter IP          low-rate unicast chatter to IP ("chatter" alone: none)
    quit
Prints "ready" once its socket is bound.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import sys
import time

PORT = 9000
BROADCAST_PORT = 9001


def _send(sock: socket.socket, data: bytes, target: tuple[str, int]) -> bool:
    """One datagram; False when the kernel refused it (full buffer, no route)."""
    try:
        sock.sendto(data, target)
    except OSError:  # BlockingIOError included: UDP may drop, the test counts
        return False
    return True


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rate-hz", type=float, default=20.0, help="datagrams/s to each peer")
    p.add_argument("--size", type=int, default=400, help="application payload bytes")
    p.add_argument("--chatter-hz", type=float, default=2.0, help="chatter datagrams/s")
    p.add_argument("--broadcast", default="", help="broadcast address for chatter ('' none)")
    args = p.parse_args()

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.bind(("0.0.0.0", PORT))
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "sock")
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "stdin")
    payload = b"a" * args.size
    small = b"c" * 32
    peers: list[str] = []
    chatter = ""
    period = 1.0 / args.rate_hz
    chatter_period = 1.0 / args.chatter_hz
    next_send = next_chatter = time.monotonic()
    buffered = b""
    failed = 0  # datagrams the kernel refused; reported on exit
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        if now >= next_send:
            for ip in peers:
                failed += not _send(sock, payload, (ip, PORT))
            next_send = max(next_send + period, now)
        if now >= next_chatter:
            targets = [(chatter, PORT)] if chatter else []
            if args.broadcast:
                targets.append((args.broadcast, BROADCAST_PORT))
            for target in targets:
                failed += not _send(sock, small, target)
            next_chatter = max(next_chatter + chatter_period, now)
        timeout = max(0.0, min(next_send, next_chatter) - time.monotonic())
        for key, _ in sel.select(timeout):
            if key.data == "sock":
                try:
                    while True:
                        sock.recv(65536)
                except (BlockingIOError, ConnectionRefusedError):
                    pass
                continue
            chunk = os.read(sys.stdin.fileno(), 65536)
            if not chunk:
                print(f"{failed} datagrams refused", file=sys.stderr, flush=True)
                return 0
            buffered += chunk
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                words = line.decode().split()
                if not words:
                    continue
                if words[0] == "quit":
                    print(f"{failed} datagrams refused", file=sys.stderr, flush=True)
                    return 0
                if words[0] == "peers":
                    peers = words[1:]
                elif words[0] == "chatter":
                    chatter = words[1] if len(words) > 1 else ""
                else:
                    print(f"unknown command {line!r}", file=sys.stderr, flush=True)
                    return 2
                print("ok", flush=True)


if __name__ == "__main__":
    sys.exit(main())
