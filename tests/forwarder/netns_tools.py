"""Frame tools run inside guest namespaces by the namespace tests.

inject: send N crafted frames (scapy) on eth0.
count:  print "ready", count frames of one ethertype on eth0 until an end marker
        frame arrives (or a deadline passes), then print the count.
"""

from __future__ import annotations

import argparse
import select
import socket
import sys
import time


def _inject(args: argparse.Namespace) -> int:
    from scapy.layers.l2 import Ether
    from scapy.sendrecv import sendp

    frame = Ether(dst=args.dst, src=args.src, type=args.ethertype) / (b"v" * args.payload)
    sendp([frame] * args.count, iface="eth0", verbose=False)
    if args.end:
        sendp(Ether(dst=args.dst, src=args.src, type=args.end) / (b"e" * 46), iface="eth0",
              verbose=False)
    return 0


def _count(args: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    sock.bind((args.iface, 0))
    print("ready", flush=True)
    n = 0
    deadline = time.monotonic() + args.timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        data, addr = sock.recvfrom(65536)
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        kind = int.from_bytes(data[12:14], "big")
        if kind == args.ethertype:
            n += 1
        elif kind == args.end:
            print(n, flush=True)
            return 0
    print(f"timeout {n}", flush=True)
    return 1


def _sink(args: argparse.Namespace) -> int:
    import hashlib

    srv = socket.create_server(("0.0.0.0", args.port))
    print("ready", flush=True)
    conn, _ = srv.accept()
    digest = hashlib.sha256()
    n = 0
    while chunk := conn.recv(1 << 20):
        digest.update(chunk)
        n += len(chunk)
    print(n, digest.hexdigest(), flush=True)
    return 0


def _source(args: argparse.Namespace) -> int:
    import hashlib
    import random

    data = random.Random(7).randbytes(args.bytes)
    with socket.create_connection((args.ip, args.port), timeout=30) as s:
        s.sendall(data)
    print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("inject")
    i.add_argument("--src", required=True)
    i.add_argument("--dst", required=True)
    i.add_argument("--count", type=int, required=True)
    i.add_argument("--payload", type=int, default=86)
    i.add_argument("--ethertype", type=lambda s: int(s, 0), default=0x88B5)
    i.add_argument("--end", type=lambda s: int(s, 0), default=0)
    c = sub.add_parser("count")
    c.add_argument("--ethertype", type=lambda s: int(s, 0), default=0x88B5)
    c.add_argument("--end", type=lambda s: int(s, 0), default=0x88B6)
    c.add_argument("--timeout", type=float, default=20.0)
    c.add_argument("--iface", default="eth0")
    k = sub.add_parser("sink")
    k.add_argument("--port", type=int, default=5300)
    s = sub.add_parser("source")
    s.add_argument("--ip", required=True)
    s.add_argument("--port", type=int, default=5300)
    s.add_argument("--bytes", type=int, default=20 << 20)
    args = p.parse_args()
    return {"inject": _inject, "count": _count, "sink": _sink, "source": _source}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
