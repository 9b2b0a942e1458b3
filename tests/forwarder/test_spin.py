"""The spinning selector: answers from its busy window after traffic, sleeps when idle."""

from __future__ import annotations

import asyncio
import selectors
import socket
import time

from services.forwarder.spin import SpinningSelector, event_loop


def test_readiness_within_the_busy_window_is_found_by_polling() -> None:
    a, b = socket.socketpair()
    with a, b, SpinningSelector(spin_s=5.0) as sel:
        sel.register(a, selectors.EVENT_READ)
        b.send(b"x")
        assert len(sel.select(1.0)) == 1 and sel.spins == 0  # first event: not busy yet
        a.recv(1)
        b.send(b"y")
        assert len(sel.select(1.0)) == 1 and sel.spins == 1  # found while spinning
        a.recv(1)


def test_an_idle_selector_blocks_for_its_timeout_after_the_window() -> None:
    a, b = socket.socketpair()
    with a, b, SpinningSelector(spin_s=0.01) as sel:
        sel.register(a, selectors.EVENT_READ)
        b.send(b"x")
        sel.select(1.0)
        a.recv(1)
        start = time.monotonic()
        assert sel.select(0.1) == []  # spins 10 ms, then sleeps out the rest
        assert time.monotonic() - start >= 0.09 and sel.spins == 0


def test_asyncio_runs_on_it() -> None:
    loop = event_loop(0.001)
    try:
        async def echo() -> bytes:
            a, b = socket.socketpair()
            with a, b:
                a.setblocking(False)
                b.setblocking(False)
                for i in range(20):
                    await loop.sock_sendall(b, bytes([i]))
                    assert await loop.sock_recv(a, 1) == bytes([i])
                return b"ok"

        assert loop.run_until_complete(echo()) == b"ok"
        selector = loop._selector  # type: ignore[attr-defined]
        assert isinstance(selector, SpinningSelector)
    finally:
        loop.close()
    plain = event_loop(0.0)
    try:
        assert not isinstance(plain._selector, SpinningSelector)  # type: ignore[attr-defined]
    finally:
        plain.close()
