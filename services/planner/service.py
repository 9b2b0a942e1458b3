"""The planner service: a pure core driven by bus messages and a clock, and
its asyncio shell.

The core keeps the world view, plans each topology change it has not
planned yet (at most once per ``min_interval_s``; a change during the wait
is planned when it ends) and returns what to publish: the plan on ``plan``
and every host's desired state on ``desired.<host>``. Control is
level-triggered both ways: the inference repeats its latest change every few
seconds (same change_id), so a planner that starts (or restarts) while the
traffic is steady, or lost the change on the bus, still plans it, and the
repeats of a change already planned are ignored; the last plan and desired
states are published again every ``republish_s``; a plan that held moves back
is made again ``recheck_held_s`` later. Right after start the
planner listens for ``settle_s`` before its first plan, so every forwarder's
state is in its view. A bad message or an unusable world view is logged and
counted and leaves the last good plan in force; nothing from the bus stops
the loop.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field, replace

from google.protobuf.message import Message

from services.bus import log as buslog
from services.bus import topics
from services.bus.client import BusClient
from services.bus.counters import Counters
from services.bus.envelope import DEFAULT_MAX_MESSAGE_BYTES, BusMessage
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings
from services.planner import registry
from services.planner.combine import PlannerFailed, PlanOutcome, PlanSettings, make_plan
from services.planner.inputs import InputSettings, WorldView
from services.planner.model import InputError
from services.planner.stability import MoveHistory

Outgoing = tuple[str, Message]
SUBSCRIPTIONS = (topics.TOPOLOGY_CHANGE, topics.TRAFFIC_MATRIX, topics.LINKS + ".",
                 topics.STATE + ".", topics.MIGRATION + ".")


@dataclass(frozen=True)
class ServiceSettings:
    algorithm: str = registry.DEFAULT  # placement planner, by registered name
    republish_s: float = 5.0  # desired states and the plan are sent again this often
    min_interval_s: float = 2.0  # at most one plan per this long
    # After start, listen this long before the first plan: forwarders send
    # their state every second by default, and a plan from a partial view
    # would take down the fast-path links of the hosts not heard from yet.
    settle_s: float = 3.0
    # Plan again, with no topology change, when the traffic moved this far
    # (relative L1 distance of the per-pair rates) from what the last plan saw:
    # a change is reported as soon as its shape is clear, often while the
    # application is still ramping up, and a move that did not pay at the
    # first rates may pay at the steady ones. 0: plan on topology changes only.
    replan_traffic_change: float = 0.5
    # Plan again this long after a plan that held moves back (not worth their cost at
    # the rates measured then, or a guest still within its dwell time): with steady
    # traffic no change comes to reopen them. 0: never.
    recheck_held_s: float = 30.0
    # No plan while this planner's moves are under way: the forwarders still
    # show the old placement, and a plan from it could send the other guests
    # the mirror way. A move not seen done (state, or migration.failed) within
    # this long no longer holds planning back.
    move_timeout_s: float = 120.0
    # A plan larger than this is trimmed (desired states, then unmoved guests) to
    # pass the bus's message limit, with room for the envelope.
    max_plan_bytes: int = DEFAULT_MAX_MESSAGE_BYTES - 4096
    plan: PlanSettings = field(default_factory=PlanSettings)
    inputs: InputSettings = field(default_factory=InputSettings)


@dataclass
class PlannerCore:
    settings: ServiceSettings
    planner: registry.PlacementPlanner
    view: WorldView = field(default_factory=WorldView)
    history: MoveHistory = field(default_factory=MoveHistory)
    counters: Counters = field(default_factory=Counters)
    plan_id: int = 0
    generation: int = 0
    last: PlanOutcome | None = None
    pending_change: bool = False
    planned_at: float = -1e18
    published_at: float = -1e18
    started_at: float | None = None  # the first time the core saw the clock
    # A change is (sender, sender's instance, change_id): ids restart with an
    # inference process. The one in the view, and the one last planned.
    taken_change: tuple[str, int, int] | None = None
    planned_change: tuple[str, int, int] | None = None
    planned_traffic: dict[tuple[str, str], float] = field(default_factory=dict)
    held_at: float | None = None  # when the last plan held moves back (None: it held none)
    moving: dict[str, tuple[str, float]] = field(default_factory=dict)  # guest -> (to, since)

    def __post_init__(self) -> None:
        self.log = buslog.get(component="planner")

    def on_message(self, msg: BusMessage, now: float) -> list[Outgoing]:
        try:
            if msg.kind == "forwarder_state":
                assert isinstance(msg.payload, pb.ForwarderState)
                self.view.on_state(msg.payload)
                for g in msg.payload.guests:
                    if self.moving.get(g.id, ("",))[0] == msg.payload.host:
                        del self.moving[g.id]
                self.generation = max(self.generation, msg.payload.generation)
            elif msg.kind == "link_measurements":
                assert isinstance(msg.payload, pb.LinkMeasurements)
                self.view.on_links(msg.payload)
            elif msg.kind == "traffic_matrix":
                assert isinstance(msg.payload, pb.TrafficMatrix)
                self.view.on_matrix(msg.payload)
                self._check_traffic()
            elif msg.kind == "migration_status":
                assert isinstance(msg.payload, pb.MigrationStatus)
                if msg.payload.phase == pb.MIGRATION_PHASE_FAILED:
                    self.moving.pop(msg.payload.guest_id, None)
            elif msg.kind == "topology_change":
                assert isinstance(msg.payload, pb.TopologyChange)
                key = (msg.source, msg.instance, msg.payload.change_id)
                if key == self.planned_change or (self.pending_change
                                                  and key == self.taken_change):
                    self.counters.inc("change_repeats")  # planned, or about to be
                else:
                    self.view.on_change(msg.payload)
                    self.taken_change = key
                    self.pending_change = True
            else:
                self.counters.inc("ignored_" + msg.kind)
                return []
        except InputError as exc:
            self.counters.inc("bad_" + msg.kind)
            self.log.error("bad message dropped", topic=msg.topic, source=msg.source,
                           error=str(exc))
            return []
        self.counters.inc("in_" + msg.kind)
        return self.tick(now)

    def _check_traffic(self) -> None:
        limit = self.settings.replan_traffic_change
        if limit <= 0 or self.last is None or self.pending_change:
            return
        if traffic_distance(self.planned_traffic, self.view.traffic()) > limit:
            self.counters.inc("replans_traffic")
            self.pending_change = True

    def tick(self, now: float) -> list[Outgoing]:
        if self.started_at is None:
            self.started_at = now
        due = self._held_recheck_at()
        if due is not None and now >= due and not self.pending_change:
            self.counters.inc("replans_held")
            self.pending_change = True
            self.held_at = None
        out: list[Outgoing] = []
        if self.pending_change and now - self.planned_at >= self.settings.min_interval_s and (
                now - self.started_at >= self.settings.settle_s) and not self._moving(now):
            self.pending_change = False
            self.planned_at = now
            out += self._plan(now)
        if self.last is not None and not out and (
                now - self.published_at >= self.settings.republish_s):
            out += self._publish(self.last, now)
            self.counters.inc("republished")
        return out

    def _held_recheck_at(self) -> float | None:
        """When the moves the last plan held back are weighed again (None: never)."""
        if self.held_at is None or self.settings.recheck_held_s <= 0:
            return None
        return self.held_at + self.settings.recheck_held_s

    def _moving(self, now: float) -> bool:
        """Are moves of the last plans still under way (and not timed out)?"""
        for guest, (_, since) in list(self.moving.items()):
            if now - since > self.settings.move_timeout_s:
                self.counters.inc("moves_timed_out")
                self.log.warning("move not seen done; planning again", guest=guest)
                del self.moving[guest]
        return bool(self.moving)

    def next_deadline(self, now: float) -> float:
        """Seconds until tick has something to do (for the shell's wait)."""
        waits = [self.settings.republish_s - (now - self.published_at)] if self.last else []
        if (due := self._held_recheck_at()) is not None:
            waits.append(due - now)
        if self.pending_change and self.moving:  # a state or status wakes it before
            waits.append(min(since + self.settings.move_timeout_s - now
                             for _, since in self.moving.values()))
        elif self.pending_change:
            listened = 0.0 if self.started_at is None else now - self.started_at
            waits.append(max(self.settings.min_interval_s - (now - self.planned_at),
                             self.settings.settle_s - listened))
        return max(0.0, min(waits, default=self.settings.republish_s))

    def _plan(self, now: float) -> list[Outgoing]:
        try:
            built = self.view.build(self.settings.inputs)
            if built.unknown_nodes:
                self.counters.inc("unknown_nodes", len(built.unknown_nodes))
                self.log.warning("traffic names guests no forwarder reports; left out",
                                 nodes=list(built.unknown_nodes[:20]))
            outcome = make_plan(
                built.problem, built.addressing, self.planner, self.history, now=now,
                plan_id=self.plan_id + 1, generation=self.generation + 1,
                based_on_change=self.view.change_id, settings=self.settings.plan,
            )
        except (InputError, PlannerFailed) as exc:
            self.counters.inc("plan_failed")
            self.log.error("no plan made", change=self.view.change_id, error=str(exc))
            return []
        self._fit(outcome.plan)
        self.planned_change = self.taken_change
        self.planned_traffic = self.view.traffic()
        for m in outcome.plan.migrations:
            self.moving[m.guest_id] = (m.to_host, now)
        self.held_at = now if any(not d.accepted for d in outcome.decisions) else None
        self.plan_id += 1
        self.generation += 1
        self.last = outcome
        self.counters.inc("plans")
        self.log.info("plan made", plan=self.plan_id, planner=self.planner.name,
                      migrations=len(outcome.plan.migrations),
                      links=len(outcome.overlay.links), cost_before=outcome.cost_before,
                      cost_after=outcome.cost_after)
        return self._publish(outcome, now)

    def _fit(self, plan: pb.Plan) -> None:
        """Keep the plan under the bus's message limit: the desired states go on
        their own topics anyway, then the placement of guests that stay."""
        limit = self.settings.max_plan_bytes
        if plan.ByteSize() <= limit:
            return
        del plan.desired[:]
        note = "\n(desired states left out of this message: see desired.<host>)"
        if plan.ByteSize() > limit:
            moved = {m.guest_id for m in plan.migrations}
            kept = [p for p in plan.placement if p.guest_id in moved]
            del plan.placement[:]
            plan.placement.extend(kept)
            note += "\n(placement lists only the guests that move)"
        if plan.ByteSize() + len(note) > limit:
            plan.explanation = plan.explanation[: max(0, limit - plan.ByteSize() - 200)]
            note += "\n(explanation cut to fit)"
        plan.explanation += note
        self.counters.inc("plan_trimmed")

    def _publish(self, outcome: PlanOutcome, now: float) -> list[Outgoing]:
        self.published_at = now
        out: list[Outgoing] = [(topics.PLAN, outcome.plan)]
        out += [(topics.join(topics.DESIRED, d.host), d) for d in outcome.desired]
        return out


async def serve(bus: BusSettings, host: str, settings: ServiceSettings) -> None:
    log = buslog.get()
    settings = replace(settings, max_plan_bytes=min(settings.max_plan_bytes,
                                                    bus.max_message_bytes - 4096))
    core = PlannerCore(settings, registry.load(settings.algorithm))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with BusClient(bus, "planner", host) as client:
        for prefix in SUBSCRIPTIONS:
            client.subscribe(prefix)
        await client.ready()
        log.info("planner on the bus", source=client.source, algorithm=settings.algorithm)
        beats = asyncio.create_task(client.heartbeats(core.counters.snapshot))
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                now = time.monotonic()
                receiving = asyncio.create_task(
                    client.recv_batch(timeout=max(0.01, core.next_deadline(now))))
                done, _ = await asyncio.wait({receiving, stopping},
                                             return_when=asyncio.FIRST_COMPLETED)
                if receiving not in done:
                    receiving.cancel()
                    break
                out: list[Outgoing] = []
                for msg in receiving.result():
                    out += core.on_message(msg, time.monotonic())
                out += core.tick(time.monotonic())
                for topic, payload in out:
                    client.publish(topic, payload)
        finally:
            beats.cancel()
            stopping.cancel()
    log.info("planner stopped", **core.counters.snapshot())


def traffic_distance(a: dict[tuple[str, str], float], b: dict[tuple[str, str], float]) -> float:
    """How far two traffic matrices are apart: sum of |rate differences| over the larger
    total (0: the same; 1: one silent and the other not; 2, the most: disjoint pairs
    with equal totals)."""
    total = max(sum(a.values()), sum(b.values()))
    if total <= 0:
        return 0.0
    return sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in a.keys() | b.keys()) / total
