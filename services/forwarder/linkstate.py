"""Per-link liveness, RTT and throughput bookkeeping, and reconnect backoff (pure).

The shell calls these with its clock; nothing here reads time itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Exponential reconnect delay: base, doubling, capped; reset on success."""

    base_s: float = 0.1
    cap_s: float = 5.0
    failures: int = 0

    def next_delay(self) -> float:
        delay = min(self.cap_s, self.base_s * 2.0 ** self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


@dataclass
class LinkStats:
    """Counters and keepalive state of one overlay link."""

    keepalive_s: float = 1.0
    dead_after: int = 3  # keepalive intervals without anything received
    tx_frames: int = 0
    tx_bytes: int = 0
    rx_frames: int = 0
    rx_bytes: int = 0
    drops: int = 0
    pings_sent: int = 0
    pongs_received: int = 0
    rtt_ms: float = 0.0
    last_rx: float = 0.0
    next_ping_at: float = 0.0
    _outstanding: dict[int, float] = field(default_factory=dict)
    _mark: tuple[float, int, int, int, int] = (0.0, 0, 0, 0, 0)

    def ping_due(self, now: float) -> int | None:
        """The sequence number of a ping to send now, or None when not due."""
        if now < self.next_ping_at:
            return None
        self.next_ping_at = now + self.keepalive_s
        self.pings_sent += 1
        seq = self.pings_sent
        self._outstanding[seq] = now
        if len(self._outstanding) > 64:  # bounded: forget the oldest
            del self._outstanding[min(self._outstanding)]
        return seq

    def on_pong(self, seq: int, now: float) -> float | None:
        """Record a pong; return the RTT in ms, or None for an unknown seq."""
        sent = self._outstanding.pop(seq, None)
        self.last_rx = now
        if sent is None:
            return None
        self.pongs_received += 1
        self.rtt_ms = (now - sent) * 1000.0
        return self.rtt_ms

    def on_receive(self, now: float) -> None:
        self.last_rx = now

    def alive(self, now: float) -> bool:
        return now - self.last_rx <= self.keepalive_s * self.dead_after

    @property
    def loss(self) -> float:
        # Pings still within one interval are in flight, not lost.
        answered_or_lost = max(0, self.pings_sent - 1)
        if answered_or_lost == 0:
            return 0.0
        return max(0.0, min(1.0, 1.0 - self.pongs_received / answered_or_lost))

    def rates(self, now: float) -> tuple[float, float]:
        """(tx, rx) bits per second since the previous call."""
        t0, txb0, rxb0, _, _ = self._mark
        dt = now - t0
        self._mark = (now, self.tx_bytes, self.rx_bytes, self.tx_frames, self.rx_frames)
        if t0 == 0.0 or dt <= 0:
            return 0.0, 0.0
        return (self.tx_bytes - txb0) * 8 / dt, (self.rx_bytes - rxb0) * 8 / dt
