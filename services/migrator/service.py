"""The migrator's I/O shell: one asyncio loop on the bus around the pure core.

Reads forwarder states (where guests live), plans and operator requests;
runs each move as a task through the backend, within the concurrency limit;
publishes migration.<phase> statuses with timings. Guest commands to
forwarders are repeated until the forwarder's state confirms them (the bus
is lossy; forwarders treat repeats as no-ops). Moves in flight are journalled
and rolled back when a restarted migrator finds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from services.bus import log as buslog
from services.bus import topics
from services.bus.client import BusClient
from services.bus.envelope import BusMessage
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings
from services.migrator.core import PHASE_TOPIC, MigratorCore
from services.migrator.journal import Journal
from services.migrator.model import Backend, Move, Outcome

SUBSCRIPTIONS = (topics.STATE + ".", topics.PLAN, topics.CONTROL_MIGRATE)


@dataclass(frozen=True)
class MigratorSettings:
    max_concurrent: int = 2  # moves at once; more requests queue
    journal_dir: str = "/run/vnet-migrator"  # in-flight moves, for recovery after a crash
    repeat_s: float = 0.3  # resend a guest command this often until a state confirms it
    # At start, gather forwarder states this long, then recover journalled moves; a request
    # naming a host or guest not heard from yet waits this long for its state.
    recover_wait_s: float = 2.0
    follow_plans: bool = True  # carry out the planner's migrations (else operators' only)
    host_stale_s: float = 10.0  # a host whose state is older is unknown


class _Control:
    """MoveControl for one move: guest commands over the bus, confirmed by states."""

    def __init__(self, svc: MigratorService, move: Move) -> None:
        self.svc = svc
        self.move = move

    async def attach(self, host: str, guest: pb.Guest, timeout: float) -> bool:
        cmd = pb.GuestCommand(host=host, command_id=f"{self.move.migration_id}-attach",
                              op=pb.GUEST_OP_ATTACH, guest=guest)
        return await self.svc.until(lambda: self.svc.core.holds(host, guest.id), timeout,
                                    lambda: self.svc.command(cmd))

    async def await_live(self, host: str, guest_id: str, timeout: float) -> bool:
        return await self.svc.until(lambda: self.svc.core.is_live(host, guest_id), timeout)

    async def detach(self, host: str, guest_id: str, timeout: float) -> bool:
        cmd = pb.GuestCommand(host=host, command_id=f"{self.move.migration_id}-detach",
                              op=pb.GUEST_OP_DETACH, guest=pb.Guest(id=guest_id))
        return await self.svc.until(lambda: not self.svc.core.holds(host, guest_id), timeout,
                                    lambda: self.svc.command(cmd))

    def progress(self, fraction: float, detail: str, bytes_moved: int = 0) -> None:
        self.svc.publish(self.svc.core.status(self.move, pb.MIGRATION_PHASE_PROGRESS,
                                              progress=fraction, detail=detail,
                                              bytes_moved=bytes_moved))

    def phase(self, name: str) -> None:
        self.svc.journal.write(self.move, name)


class MigratorService:
    def __init__(self, settings: MigratorSettings, backend: Backend, client: BusClient) -> None:
        self.s = settings
        self.backend = backend
        self.client = client
        self.core = MigratorCore(backend.name, settings.max_concurrent, settings.host_stale_s,
                                 settle_until=time.monotonic() + settings.recover_wait_s)
        self.journal = Journal(settings.journal_dir)
        self.log = buslog.get(component="migrator")
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ helpers for moves

    def publish(self, status: pb.MigrationStatus) -> None:
        self.client.publish(topics.join(topics.MIGRATION, PHASE_TOPIC[status.phase]), status)

    def command(self, cmd: pb.GuestCommand) -> None:
        self.client.publish(topics.join(topics.CONTROL_GUEST, cmd.host), cmd)

    async def until(self, done: Callable[[], bool], timeout: float,
                    resend: Callable[[], None] | None = None) -> bool:
        """Wait for a condition on forwarder states, resending a command meanwhile."""
        deadline = time.monotonic() + timeout
        next_send = 0.0
        while not done():
            now = time.monotonic()
            if now >= deadline:
                return False
            if resend is not None and now >= next_send:
                resend()
                next_send = now + self.s.repeat_s
            changed = self._changed
            wait = min(deadline, next_send if resend else deadline) - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), max(0.005, wait))
        return True

    def _pulse(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # ------------------------------------------------------------ the loop

    def on_message(self, msg: BusMessage, now: float) -> None:
        payload = msg.payload
        if isinstance(payload, pb.ForwarderState):
            self.core.observe(payload, now)
            self._pulse()
        elif isinstance(payload, pb.MigrationRequest):
            self._request(payload, now)
        elif isinstance(payload, pb.Plan) and self.s.follow_plans:
            for m in payload.migrations:
                self._request(pb.MigrationRequest(
                    migration_id=m.migration_id, guest_id=m.guest_id, to_host=m.to_host,
                    requested_by=f"planner:{payload.planner}:{payload.plan_id}"), now)

    def _request(self, req: pb.MigrationRequest, now: float) -> None:
        refused = self.core.request(req, now)
        if refused is not None:
            self._refused(refused)
        self._start_ready()

    def recheck(self, now: float) -> None:
        """Parked requests (states not yet heard after a start): queue or refuse them."""
        if not self.core.parked:
            return
        for refused in self.core.recheck(now):
            self._refused(refused)
        self._start_ready()

    def _refused(self, status: pb.MigrationStatus) -> None:
        self.log.warning("migration refused", migration=status.migration_id,
                         guest=status.guest_id, to=status.to_host, error=status.error)
        self.publish(status)

    def _start_ready(self) -> None:
        for move in self.core.start_ready():
            self._spawn(self._run(move))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, move: Move) -> None:
        t0 = time.monotonic()
        self.journal.write(move, "started")
        self.publish(self.core.status(move, pb.MIGRATION_PHASE_STARTED,
                                      detail=f"requested by {move.requested_by or 'unknown'}"))
        self.log.info("migration started", migration=move.migration_id, guest=move.guest_id,
                      src=move.from_host, to=move.to_host, backend=self.backend.name)
        try:
            outcome = await self.backend.run(move, _Control(self, move))
        except Exception as exc:  # a backend bug must not take the service down
            self.log.exception("backend raised", migration=move.migration_id)
            note = await self.backend.recover(move, "error", _Control(self, move))
            outcome = Outcome(False, f"backend error: {exc!r}; {note}")
        total = time.monotonic() - t0
        phase = pb.MIGRATION_PHASE_DONE if outcome.ok else pb.MIGRATION_PHASE_FAILED
        self.publish(self.core.status(
            move, phase, progress=1.0 if outcome.ok else 0.0, detail=outcome.detail,
            error=outcome.error, total_s=total, downtime_s=outcome.downtime_s,
            bytes_moved=outcome.bytes_moved))
        (self.log.info if outcome.ok else self.log.error)(
            "migration done" if outcome.ok else "migration failed", migration=move.migration_id,
            total_s=round(total, 4), downtime_s=round(outcome.downtime_s, 4),
            bytes=outcome.bytes_moved, error=outcome.error)
        self.journal.remove(move)
        self.core.finish(move, outcome)
        self._start_ready()

    async def recover(self) -> None:
        """Roll back the moves a killed migrator left journalled, each with a failed event."""
        entries = self.journal.entries()
        if not entries:
            return
        for e in entries:
            self.core.adopt(e.move)
        await asyncio.sleep(self.s.recover_wait_s)  # states arrive meanwhile
        for e in entries:
            note = await self.backend.recover(e.move, e.phase, _Control(self, e.move))
            self.publish(self.core.status(
                e.move, pb.MIGRATION_PHASE_FAILED,
                error=f"migrator restarted during the move (at {e.phase}); {note}"))
            self.log.warning("interrupted migration recovered", migration=e.move.migration_id,
                             phase=e.phase, note=note)
            self.journal.remove(e.move)
            self.core.finish(e.move, Outcome(False))
        self._start_ready()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def serve(bus: BusSettings, host: str, settings: MigratorSettings,
                backend: Backend) -> None:
    log = buslog.get()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with BusClient(bus, "migrator", host) as client:
        for prefix in SUBSCRIPTIONS:
            client.subscribe(prefix)
        await client.ready()
        svc = MigratorService(settings, backend, client)
        log.info("migrator on the bus", source=client.source, backend=backend.name,
                 max_concurrent=settings.max_concurrent)
        print('{"ready": true, "service": "migrator"}', flush=True)
        beats = asyncio.create_task(client.heartbeats(svc.core.counters.snapshot))
        svc._spawn(svc.recover())
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                receiving = asyncio.create_task(client.recv_batch(timeout=1.0))
                done, _ = await asyncio.wait({receiving, stopping},
                                             return_when=asyncio.FIRST_COMPLETED)
                if receiving not in done:
                    receiving.cancel()
                    break
                now = time.monotonic()
                for msg in receiving.result():
                    svc.on_message(msg, now)
                svc.recheck(now)  # after the batch's states, or the settling time ran out
        finally:
            beats.cancel()
            stopping.cancel()
            await svc.close()
    log.info("migrator stopped", **svc.core.counters.snapshot())
