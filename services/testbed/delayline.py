"""Pure core of the delay relay: frames wait here until their release time.

One priority queue keyed on release time (then arrival order) serves every
direction of every WAN link, so the relay's single selector loop only ever asks
"what is due now, and when is the next one due?". The queue is bounded in bytes:
a frame that would overflow it is dropped and counted, as a router's full queue
would. No clock inside: callers pass `now_ns`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

DEFAULT_CAPACITY_BYTES = 32 * 1024 * 1024
"""Bytes held at most: 1 Gbit/s × 250 ms; beyond it frames are dropped (tail drop)."""


@dataclass
class DelayCounters:
    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    frames_dropped_full: int = 0


@dataclass
class DelayLine:
    capacity_bytes: int = DEFAULT_CAPACITY_BYTES
    counters: DelayCounters = field(default_factory=DelayCounters)
    _heap: list[tuple[int, int, int, bytes]] = field(default_factory=list)
    _seq: int = 0
    _held_bytes: int = 0

    def push(self, now_ns: int, delay_ns: int, port: int, frame: bytes) -> bool:
        """Hold `frame` for `delay_ns`, then release it to `port`; False if dropped (full)."""
        self.counters.frames_in += 1
        self.counters.bytes_in += len(frame)
        if self._held_bytes + len(frame) > self.capacity_bytes:
            self.counters.frames_dropped_full += 1
            return False
        self._seq += 1
        heapq.heappush(self._heap, (now_ns + delay_ns, self._seq, port, frame))
        self._held_bytes += len(frame)
        return True

    def pop_due(self, now_ns: int, limit: int = 1 << 30) -> list[tuple[int, bytes]]:
        """(port, frame) of up to `limit` frames whose release time has come, earliest first."""
        out: list[tuple[int, bytes]] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ns and len(out) < limit:
            _, _, port, frame = heapq.heappop(heap)
            self._held_bytes -= len(frame)
            out.append((port, frame))
        self.counters.frames_out += len(out)
        self.counters.bytes_out += sum(len(f) for _, f in out)
        return out

    def next_release_ns(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def __len__(self) -> int:
        return len(self._heap)
