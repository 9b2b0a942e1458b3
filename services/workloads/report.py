"""Application throughput reports: when to send one and what it says.

The meter is pure (it takes the time as an argument), so tests drive it with
a fake clock; the worker publishes what it returns on app.<app>.<guest>.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.bus import topics
from services.bus.pb import vnet_pb2 as pb

APP = "patterns"


def topic(app: str, guest: str) -> str:
    return topics.join(topics.APP, app, guest)


@dataclass
class Totals:
    """What a worker has done since its start."""

    iterations: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


class Meter:
    """Turns running totals into one AppReport per interval, and a last one."""

    def __init__(self, template: pb.AppReport, interval_s: float, now: float) -> None:
        self.template = template   # app, guest, rank, topology, workers
        self.interval_s = interval_s
        self.started = now
        self._last_t = now
        self._last_iterations = 0

    def due(self, now: float) -> bool:
        return now - self._last_t >= self.interval_s

    def next_due(self, now: float) -> float:
        """Seconds until the next report is due (0 when it is)."""
        return max(0.0, self._last_t + self.interval_s - now)

    def poll(self, now: float, totals: Totals) -> pb.AppReport | None:
        """A report when the interval is over, else None."""
        return self.report(now, totals) if self.due(now) else None

    def report(self, now: float, totals: Totals, done: bool = False,
               error: str = "") -> pb.AppReport:
        """The report for the time since the last one; starts the next interval."""
        interval = now - self._last_t
        rate = (totals.iterations - self._last_iterations) / interval if interval > 0 else 0.0
        out = pb.AppReport()
        out.CopyFrom(self.template)
        out.iterations = totals.iterations
        out.iterations_per_s = rate
        out.bytes_sent = totals.bytes_sent
        out.bytes_received = totals.bytes_received
        out.interval_s = interval
        out.done = done
        out.error = error
        self._last_t = now
        self._last_iterations = totals.iterations
        return out
