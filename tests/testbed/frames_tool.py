"""Send or receive numbered test frames on an interface (run inside a namespace).

    python -m tests.testbed.frames_tool send IFNAME COUNT
    python -m tests.testbed.frames_tool recv IFNAME COUNT TIMEOUT_S

Frames use the local experimental ethertype 0x88b5; each line of output is JSON.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time

ETHERTYPE = 0x88B5
SIZES = (60, 200, 1000, 1514)
SO_RCVBUFFORCE = 33


def frame(seq: int) -> bytes:
    size = SIZES[seq % len(SIZES)]
    head = b"\xff" * 6 + b"\x02\x76\x6e\xee\x00\x01" + struct.pack("!HI", ETHERTYPE, seq)
    return head + bytes((seq + i) & 0xFF for i in range(size - len(head)))


def send(ifname: str, count: int) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
    s.bind((ifname, ETHERTYPE))
    frames = [frame(seq) for seq in range(count)]  # built first: send in a tight loop
    times = []
    for f in frames:
        times.append(time.monotonic())
        s.send(f)
    print(json.dumps({"sent": times}), flush=True)


def recv(ifname: str, count: int, timeout_s: float) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 * 1024 * 1024)  # the burst arrives at once
    s.bind((ifname, ETHERTYPE))
    print(json.dumps({"ready": True}), flush=True)
    raw: list[tuple[bytes, float]] = []
    deadline = time.monotonic() + timeout_s
    while len(raw) < count and time.monotonic() < deadline:
        ready, _, _ = select.select([s], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        raw.append((s.recv(65536), time.monotonic()))  # checked later: keep up with bursts
    got = []
    for data, when in raw:
        (seq,) = struct.unpack("!I", data[14:18])
        got.append((seq, when, data == frame(seq)))
    print(json.dumps({"received": got}), flush=True)


if __name__ == "__main__":
    cmd, ifname, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if cmd == "send":
        send(ifname, count)
    else:
        recv(ifname, count, float(sys.argv[4]))
