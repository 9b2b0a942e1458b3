"""Charge a netns move the cost of copying a guest's memory across the underlay.

A namespace guest has no memory image to move, but a VM does, and its move
takes as long as its memory takes to cross the link between the two hosts.
`copy_memory` runs a receiver in the destination host's namespace and a sender
in the source's, and streams the configured number of bytes over TCP between
their underlay addresses, so a move's duration follows the real (shaped) link.
Like QEMU's multifd migration, the bytes may go over several TCP connections
at once (``channels``), so a copy is not starved by the application's own
flows on a link both share. Run as a module it is that sender or receiver.
"""

from __future__ import annotations

import argparse
import asyncio
import selectors
import socket
import sys
import time
from collections.abc import Callable

CHUNK = 1 << 20
CONNECT_S = 60.0


async def _line(stream: asyncio.StreamReader | None, timeout: float) -> str:
    assert stream is not None
    return (await asyncio.wait_for(stream.readline(), timeout)).decode().strip()


async def copy_memory(src_netns: str, dst_netns: str, dst_ip: str, port: int, nbytes: int,
                      on_progress: Callable[[int], None], timeout: float = 600.0,
                      channels: int = 1) -> int:
    """Stream nbytes from src_netns to dst_ip:port in dst_netns over channels TCP
    connections; the bytes received."""
    me = [sys.executable, "-m", "services.migrator.memcopy"]
    chan = ["--channels", str(channels)]
    recv = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", dst_netns, *me, "recv", "--listen", f"{dst_ip}:{port}",
        "--bytes", str(nbytes), *chan, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    send: asyncio.subprocess.Process | None = None
    try:
        if await _line(recv.stdout, 30.0) != "ready":
            raise OSError(f"memory receiver in {dst_netns} did not start")
        send = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", src_netns, *me, "send", "--to", f"{dst_ip}:{port}",
            "--bytes", str(nbytes), *chan, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while True:
            line = await _line(send.stdout, max(0.1, deadline - time.monotonic()))
            if not line:
                break
            kind, _, value = line.partition(" ")
            if kind == "sent":
                on_progress(int(value))
        if await send.wait() != 0:
            err = (await send.stderr.read()).decode() if send.stderr else ""
            raise OSError(f"memory sender to {dst_netns} failed (exit {send.returncode}):"
                          f" {err.strip()[-300:]}")
        done = await _line(recv.stdout, max(0.1, deadline - time.monotonic()))
        if not done.startswith("received "):
            err = (await recv.stderr.read()).decode() if recv.stderr else ""
            raise OSError(f"memory copy to {dst_netns} failed: {err.strip()[-300:]}")
        return int(done.split()[1])
    finally:
        for proc in (send, recv):
            if proc is not None and proc.returncode is None:
                proc.kill()
            if proc is not None:
                await proc.wait()


def _recv(listen: str, nbytes: int, channels: int = 1) -> int:
    host, _, port = listen.rpartition(":")
    got = 0
    with socket.create_server((host, int(port)), backlog=channels) as server, \
            selectors.DefaultSelector() as sel:
        print("ready", flush=True)
        conns = []
        try:
            for _ in range(channels):
                conn, _ = server.accept()
                conns.append(conn)
                sel.register(conn, selectors.EVENT_READ, conn)
            buf = bytearray(CHUNK)
            while got < nbytes and sel.get_map():  # until every channel closed
                for key, _ in sel.select(timeout=30.0) or _stalled():
                    ready: socket.socket = key.data
                    n = ready.recv_into(buf)
                    if n == 0:
                        sel.unregister(ready)
                    got += n
        finally:
            for conn in conns:
                conn.close()
    print(f"received {got}", flush=True)
    return 0 if got == nbytes else 1


def _stalled() -> list[tuple[selectors.SelectorKey, int]]:
    raise TimeoutError("no byte for 30 s on any channel")


def _connect(host: str, port: int, within_s: float) -> socket.socket:
    """Connect, sending a fresh SYN every second: on a saturated tail-drop link a lost
    SYN would otherwise wait out the kernel's backoff (1, 3, 7, 15, 31 s)."""
    deadline = time.monotonic() + within_s
    while True:
        attempt = time.monotonic()
        try:
            conn = socket.create_connection((host, port), timeout=1.0)
        except OSError:
            if time.monotonic() >= deadline:
                raise
            # A refusal comes back at once: wait out the second, do not spin.
            time.sleep(max(0.0, attempt + 1.0 - time.monotonic()))
            continue
        conn.settimeout(30.0)
        return conn


def _send(to: str, nbytes: int, channels: int = 1) -> int:
    """Split nbytes over channels connections and keep each one's send buffer full."""
    host, _, port = to.rpartition(":")
    chunk = memoryview(bytes(CHUNK))
    left: dict[socket.socket, int] = {}
    sent = 0
    last = 0.0
    with selectors.DefaultSelector() as sel:
        try:
            for i in range(channels):
                conn = _connect(host, int(port), CONNECT_S)
                conn.setblocking(False)
                left[conn] = nbytes // channels + (nbytes % channels if i == 0 else 0)
                sel.register(conn, selectors.EVENT_WRITE, conn)
            while sent < nbytes:
                for key, _ in sel.select(timeout=30.0) or _stalled():
                    ready: socket.socket = key.data
                    try:
                        n = ready.send(chunk[:min(CHUNK, left[ready])])
                    except BlockingIOError:
                        continue
                    left[ready] -= n
                    sent += n
                    if not left[ready]:
                        sel.unregister(ready)
                now = time.monotonic()
                if now - last >= 0.1:
                    print(f"sent {sent}", flush=True)
                    last = now
        finally:
            for conn in left:
                conn.close()
    print(f"sent {sent}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="memcopy")
    p.add_argument("role", choices=["send", "recv"])
    p.add_argument("--listen", default="")
    p.add_argument("--to", default="")
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--channels", type=int, default=1)
    args = p.parse_args(argv)
    if args.channels < 1:
        p.error("--channels must be at least 1")
    if args.role == "recv":
        return _recv(args.listen, args.bytes, args.channels)
    return _send(args.to, args.bytes, args.channels)


if __name__ == "__main__":
    sys.exit(main())
