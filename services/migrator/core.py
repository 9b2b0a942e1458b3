"""The migrator's pure core: where guests live, which requests stand, what to say.

No sockets or clocks: the shell feeds it forwarder states and requests with
the current time and publishes the statuses it returns. A request is refused
(a FAILED status naming why, nothing changed) when the guest or host is
unknown, the guest is already on that host, or it is already moving.

Right after a start the migrator has heard from no forwarder yet: until
settle_until, a request naming a host or guest it does not know yet waits
(parked) for the states to come, and is judged again as they do (recheck).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from services.bus.counters import Counters
from services.bus.pb import vnet_pb2 as pb
from services.migrator.model import Move, Outcome

_SEEN_LIMIT = 10_000


@dataclass
class HostView:
    live: dict[str, pb.Guest] = field(default_factory=dict)
    waiting: set[str] = field(default_factory=set)
    seen_at: float = 0.0


class MigratorCore:
    def __init__(self, backend: str, max_concurrent: int = 2, host_stale_s: float = 10.0,
                 settle_until: float = 0.0) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent {max_concurrent} must be at least 1")
        self.backend = backend
        self.max_concurrent = max_concurrent
        self.host_stale_s = host_stale_s
        self.settle_until = settle_until
        self.parked: list[tuple[str, pb.MigrationRequest]] = []  # (migration id, request)
        self.hosts: dict[str, HostView] = {}
        self.queue: deque[Move] = deque()
        self.active: dict[str, Move] = {}  # by migration id
        self.counters = Counters()
        self._seen: OrderedDict[str, None] = OrderedDict()  # migration ids already taken

    # ------------------------------------------------------------ inputs

    def observe(self, state: pb.ForwarderState, now: float) -> None:
        view = self.hosts.setdefault(state.host, HostView())
        view.live = {g.id: g for g in state.guests}
        view.waiting = {g.id for g in state.waiting}
        view.seen_at = now

    def where(self, guest_id: str, now: float) -> list[str]:
        """Hosts that report the guest live (normally one)."""
        return sorted(h for h, v in self.hosts.items()
                      if guest_id in v.live and now - v.seen_at <= self.host_stale_s)

    def holds(self, host: str, guest_id: str) -> bool:
        view = self.hosts.get(host)
        return view is not None and (guest_id in view.live or guest_id in view.waiting)

    def is_live(self, host: str, guest_id: str) -> bool:
        view = self.hosts.get(host)
        return view is not None and guest_id in view.live

    def request(self, req: pb.MigrationRequest, now: float) -> pb.MigrationStatus | None:
        """Queue a move, or return the FAILED status that refuses it (None: a repeat)."""
        mid = req.migration_id or f"{req.guest_id}-to-{req.to_host}-{int(now * 1000)}"
        if mid in self._seen:
            self.counters.inc("request_repeated")
            return None
        self._remember(mid)
        return self._judge(mid, req, now, fresh=True)

    def recheck(self, now: float) -> list[pb.MigrationStatus]:
        """Judge the parked requests again (new states came, or time passed): queue
        those that now hold, and refuse the rest once the settling time is over."""
        parked, self.parked = self.parked, []
        refused = [self._judge(mid, req, now, fresh=False) for mid, req in parked]
        return [status for status in refused if status is not None]

    def _judge(self, mid: str, req: pb.MigrationRequest, now: float,
               fresh: bool) -> pb.MigrationStatus | None:
        error, unheard = self._check(req, now)
        if error and unheard and now < self.settle_until:
            self.parked.append((mid, req))
            if fresh:
                self.counters.inc("request_parked")
            return None
        if error:
            self.counters.inc("request_refused")
            return pb.MigrationStatus(
                migration_id=mid, guest_id=req.guest_id, to_host=req.to_host,
                phase=pb.MIGRATION_PHASE_FAILED, backend=self.backend, error=error,
                detail="refused; nothing changed")
        where = self.where(req.guest_id, now)
        move = Move(migration_id=mid, guest=self.hosts[where[0]].live[req.guest_id],
                    from_host=where[0], to_host=req.to_host, requested_by=req.requested_by)
        self.queue.append(move)
        self.counters.inc("request_queued")
        return None

    def _check(self, req: pb.MigrationRequest, now: float) -> tuple[str, bool]:
        """Why the request cannot be queued ("" if it can), and whether the reason is
        only a host or guest not heard from (yet)."""
        if not req.guest_id or not req.to_host:
            return "a migration request needs a guest and a destination host", False
        if self.moving(req.guest_id):
            return f"guest {req.guest_id!r} is already moving", False
        view = self.hosts.get(req.to_host)
        if view is None or now - view.seen_at > self.host_stale_s:
            known = ", ".join(sorted(self.hosts)) or "none"
            return f"unknown host {req.to_host!r} (hosts with a live forwarder: {known})", True
        where = self.where(req.guest_id, now)
        if not where:
            return f"unknown guest {req.guest_id!r}: no forwarder reports it live", True
        if len(where) > 1:
            return f"guest {req.guest_id!r} is reported live on {where}; refusing to guess", False
        if where[0] == req.to_host:
            return f"guest {req.guest_id!r} is already on {req.to_host!r}", False
        return "", False

    def moving(self, guest_id: str) -> bool:
        """Queued or running. A parked request does not count: the first request for a
        guest that can go, goes; a parked one met again later finds the guest moving."""
        return any(m.guest_id == guest_id for m in [*self.queue, *self.active.values()])

    def adopt(self, move: Move) -> None:
        """A journalled move found at start: it counts as active until recovered."""
        self._remember(move.migration_id)
        self.active[move.migration_id] = move

    def _remember(self, mid: str) -> None:
        self._seen[mid] = None
        while len(self._seen) > _SEEN_LIMIT:
            self._seen.popitem(last=False)

    # ------------------------------------------------------------ running

    def start_ready(self) -> list[Move]:
        """Moves to start now, within the concurrency limit."""
        out: list[Move] = []
        while self.queue and len(self.active) < self.max_concurrent:
            move = self.queue.popleft()
            self.active[move.migration_id] = move
            out.append(move)
        return out

    def finish(self, move: Move, outcome: Outcome) -> None:
        self.active.pop(move.migration_id, None)
        self.counters.inc("migration_done" if outcome.ok else "migration_failed")

    def status(self, move: Move, phase: pb.MigrationPhase, *, progress: float = 0.0,
               detail: str = "", error: str = "", total_s: float = 0.0, downtime_s: float = 0.0,
               bytes_moved: int = 0) -> pb.MigrationStatus:
        return pb.MigrationStatus(
            migration_id=move.migration_id, guest_id=move.guest_id, from_host=move.from_host,
            to_host=move.to_host, phase=phase, backend=self.backend, progress=progress,
            detail=detail, error=error, total_s=total_s, downtime_s=downtime_s,
            bytes_moved=bytes_moved)


PHASE_TOPIC = {
    pb.MIGRATION_PHASE_STARTED: "started",
    pb.MIGRATION_PHASE_PROGRESS: "progress",
    pb.MIGRATION_PHASE_DONE: "done",
    pb.MIGRATION_PHASE_FAILED: "failed",
}
