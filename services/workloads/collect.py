"""Read application reports from the bus: for the demo, the evaluation and tests.

Keeps every AppReport of one app by guest, so a caller can ask for the
latest throughput or wait until every worker has sent its last report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from services.bus import topics
from services.bus.client import BusClient
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings
from services.workloads import report


class ReportCollector:
    """Subscribes to app.<app>; use as `async with` (the ready handshake is done on entry)."""

    def __init__(self, bus: BusSettings, app: str = report.APP, name: str = "collector") -> None:
        self.app = app
        self.client = BusClient(bus, "app-collector", name)
        self.client.subscribe(topics.join(topics.APP, app) + ".")
        self.reports: dict[str, list[pb.AppReport]] = {}

    async def __aenter__(self) -> ReportCollector:
        await self.client.ready()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.client.close()

    async def poll(self, timeout: float) -> None:
        """Take in whatever reports come within timeout seconds."""
        for msg in await self.client.recv_batch(max(0.0, timeout)):
            if isinstance(msg.payload, pb.AppReport) and msg.payload.app == self.app:
                self.reports.setdefault(msg.payload.guest, []).append(msg.payload)

    async def until(self, done: Callable[[ReportCollector], bool], timeout: float,
                    what: str) -> None:
        """Poll until done(self) holds; TimeoutError naming `what` if it does not in time."""
        deadline = time.monotonic() + timeout
        while not done(self):
            left = deadline - time.monotonic()
            if left <= 0:
                seen = {g: r[-1].iterations for g, r in sorted(self.reports.items())}
                raise TimeoutError(f"no {what} within {timeout:g}s (iterations seen: {seen})")
            await self.poll(left)

    def finished(self, guests: Iterable[str]) -> bool:
        """Every guest has sent its last report (done)."""
        return all(any(r.done for r in self.reports.get(g, ())) for g in guests)

    def latest(self) -> dict[str, pb.AppReport]:
        return {g: r[-1] for g, r in self.reports.items() if r}

    def rate(self, guests: Iterable[str] | None = None) -> float:
        """The application's iterations per second now: the slowest worker's last interval.

        Bulk-synchronous workers move together, so the slowest is the application's pace.
        """
        latest = self.latest()
        chosen = list(latest) if guests is None else list(guests)
        rates = [latest[g].iterations_per_s for g in chosen if g in latest and
                 not latest[g].done]
        return min(rates) if rates else 0.0
