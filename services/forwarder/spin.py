"""A selector that keeps polling for a moment after traffic, instead of sleeping at once.

A frame crossing the overlay wakes a forwarder from epoll_wait; on a virtual
machine that wake-up (an idle vCPU halts, an interrupt brings it back) costs
tens of microseconds, paid again for every frame of a request-response
exchange. After an fd was ready, this selector polls without blocking for up
to ``spin_s`` before it blocks: a reply that comes back within that window is
picked up with no wake-up at all. The busy window costs CPU only while
traffic comes and goes (each readiness restarts it); an idle forwarder
sleeps as before. asyncio's loop runs on it unchanged (one loop, no thread).
"""

from __future__ import annotations

import asyncio
import selectors
import time


class SpinningSelector(selectors.EpollSelector):
    def __init__(self, spin_s: float) -> None:
        super().__init__()
        self.spin_s = spin_s
        self._busy_until = 0.0
        self.spins = 0  # selects answered while spinning (for the forwarder's counters)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:
            return self._mark(super().select(0))
        start = time.monotonic()
        if start < self._busy_until:
            end = self._busy_until if timeout is None else min(self._busy_until, start + timeout)
            while True:
                ready = super().select(0)
                if ready:
                    self.spins += 1
                    return self._mark(ready)
                if time.monotonic() >= end:
                    break
            if timeout is not None:
                timeout = max(0.0, timeout - (time.monotonic() - start))
        return self._mark(super().select(timeout))

    def _mark(self, ready: list[tuple[selectors.SelectorKey, int]]
              ) -> list[tuple[selectors.SelectorKey, int]]:
        if ready:
            self._busy_until = time.monotonic() + self.spin_s
        return ready


def event_loop(spin_s: float) -> asyncio.AbstractEventLoop:
    """asyncio's selector loop, spinning spin_s after traffic (0: a plain loop)."""
    if spin_s <= 0:
        return asyncio.SelectorEventLoop()
    return asyncio.SelectorEventLoop(SpinningSelector(spin_s))
