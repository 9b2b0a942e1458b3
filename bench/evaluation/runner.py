"""One measurement on a fresh system: build the testbed and vnet, run Patterns, watch the bus.

The testbed is built outside any event loop (pyroute2), then one asyncio loop
runs the workload and reads the bus: app reports (throughput, errors),
forwarder states (where each guest lives, which fast-path links are up) and
migrations. Everything is removed on exit, even after errors (Stack and
CpuLoad are context managers).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.evaluation import series
from bench.evaluation.cpuload import CpuLoad
from bench.evaluation.scenarios import (
    ADAPTIVE,
    MEMORY_MB,
    MODES,
    ORACLE_PLANNER,
    Scenario,
    WebWorkload,
    common_planner_args,
)
from services.bus import topics
from services.bus.client import BusClient
from services.bus.launch import stop_process
from services.bus.pb import vnet_pb2 as pb
from services.cli.stack import Stack, StackSettings
from services.workloads.launch import PatternsRun, Workload
from services.workloads.web import WebSite

Progress = Callable[[str], None]
FINAL_S = 12.0  # the final throughput: the last this many seconds of a run


@dataclass(frozen=True)
class Timing:
    """How long each phase goes (seconds)."""

    none_s: float = 14.0       # no adaptation: the star through the proxy
    adaptive_s: float = 50.0   # vnet adapts from the workload's start; final = last FINAL_S
    oracle_s: float = 22.0     # a static placement with every direct link
    sweep_settle_s: float = 3.0
    sweep_window_s: float = 8.0
    sweep_links_timeout_s: float = 14.0
    connect_timeout_s: float = 40.0  # every worker reports within this of its launch


@dataclass
class Measurement:
    mode: str
    placement: tuple[str, ...]
    final_it_s: float = 0.0
    t90_s: float | None = None
    timeline: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    migrations: list[str] = field(default_factory=list)
    links_max: int = 0
    final_placement: dict[str, str] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)  # the links sweep

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "placement": list(self.placement),
            "final_it_s": round(self.final_it_s, 3),
            "t90_s": self.t90_s, "timeline": [[t, round(r, 3)] for t, r in self.timeline],
            "errors": self.errors, "migrations": self.migrations, "links_max": self.links_max,
            "final_placement": self.final_placement, "steps": self.steps,
        }


class Observer:
    """What the bus said, with times relative to the workload's start."""

    def __init__(self, client: BusClient, t0: float) -> None:
        self.client = client
        self.t0 = t0
        # Reports are timed by their sender (the envelope's wall-clock ts), so a
        # moment the runner spends elsewhere (starting the planner) bunches nothing.
        self.wall0 = time.time() - (time.monotonic() - t0)
        self.points: dict[str, list[tuple[float, int]]] = {}
        self.done: set[str] = set()
        self.errors: list[str] = []
        self.migrations: list[tuple[str, float]] = []  # (guest from->to, when done)
        self.where: dict[str, str] = {}
        self.links_up: dict[str, set[str]] = {}

    def links(self) -> int:
        return len(set().union(*self.links_up.values())) if self.links_up else 0

    async def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            for msg in await self.client.recv_batch(timeout=left):
                self.on(msg.payload, msg.ts - self.wall0)

    def on(self, p: Any, now: float) -> None:
        if isinstance(p, pb.AppReport):
            self.points.setdefault(p.guest, []).append((now, int(p.iterations)))
            if p.error:
                self.errors.append(f"{p.guest}: {p.error}")
            if p.done:
                self.done.add(p.guest)
        elif isinstance(p, pb.ForwarderState):
            self.links_up[p.host] = {ls.spec.id for ls in p.links if ls.up and ls.spec.fast_path}
            for g in p.guests:
                self.where[g.id] = p.host
        elif isinstance(p, pb.MigrationStatus):
            if p.phase == pb.MIGRATION_PHASE_DONE:
                self.migrations.append((f"{p.guest_id} {p.from_host}->{p.to_host}", now))
            elif p.phase == pb.MIGRATION_PHASE_FAILED:
                self.errors.append(f"migration of {p.guest_id} failed: {p.error}")


def settings_for(mode: str, network: Path) -> StackSettings:
    planner = ORACLE_PLANNER if mode == "oracle" else MODES[mode]
    return StackSettings(planner_args=(*common_planner_args(), "--network", str(network),
                                       *planner),
                         migrator_args=("--memory-mb", str(MEMORY_MB)))


def measure(scn: Scenario, mode: str, logs: Path, timing: Timing, progress: Progress,
            placement: tuple[str, ...] | None = None) -> Measurement:
    """One run of scn in mode ("none", "overlay", "migration", "both", "oracle", "sweep")."""
    where = placement or scn.placement
    logs.mkdir(parents=True, exist_ok=True)
    network = logs / "network.toml"
    network.write_text(scn.network_toml())
    settings = settings_for("none" if mode == "sweep" else mode, network)
    with Stack(scn.spec(where), logs, settings) as stack, ExitStack() as extra:
        load = None
        if scn.loaded_host:
            assert stack.tb is not None
            load = extra.enter_context(CpuLoad(stack.tb, scn.loaded_host, scn.load_quota,
                                               f"vnet-eval-{stack.tb.prefix}"))
            load.add(stack.forwarders[scn.loaded_host].pid)
        site = None
        if isinstance(scn.workload, WebWorkload):
            assert stack.tb is not None and stack.bus is not None
            site = extra.enter_context(WebSite(stack.tb, scn.workload.guests, stack.bus,
                                               scn.workload.settings, logs=logs))
        return asyncio.run(_drive(stack, scn, mode, where, load, logs, timing, progress,
                                  site))


async def _drive(stack: Stack, scn: Scenario, mode: str, where: tuple[str, ...],
                 load: CpuLoad | None, logs: Path, timing: Timing,
                 progress: Progress, site: WebSite | None = None) -> Measurement:
    tb, bus = stack.tb, stack.bus
    assert tb is not None and bus is not None
    client = BusClient(bus, "eval", "eval")
    for prefix in (topics.APP + ".", topics.STATE + ".", topics.MIGRATION + "."):
        client.subscribe(prefix)
    await client.ready()
    if mode == "oracle":
        stack.start_planner()
    elif mode in ADAPTIVE:
        stack.start_adaptation()  # vnet runs, then the workload starts on it
    out = Measurement(mode, where)
    guests = list(scn.guests)
    try:
        with _application(scn, stack, logs, site) as app:
            obs = Observer(client, time.monotonic())
            if load is not None:
                load.workers = app.pids
                load.place(dict(zip(guests, where, strict=True)))
            await _until_reporting(obs, app.reporters, timing.connect_timeout_s)
            if mode == "sweep":
                await _sweep(stack, scn, obs, timing, progress, out)
            else:
                await _pump(obs, load, {"oracle": timing.oracle_s, "none": timing.none_s}.get(
                    mode, timing.adaptive_s))
            t_end = time.monotonic() - obs.t0
            out.errors += app.stop()
            await obs.pump(1.5)  # the workers' last reports
    finally:
        client.close()
    out.errors += obs.errors
    out.errors += [f"{name} died" for name in stack.alive()]
    out.links_max = max(out.links_max, obs.links())
    out.final_placement = {g: obs.where.get(g, "?") for g in guests}
    out.final_it_s = series.rate(obs.points, t_end - FINAL_S, t_end)
    # Times count from the workload's start, its first report (adaptive runs: vnet was
    # adapting before; a worker reports once a second, so this is late by up to 1 s).
    t_start = min((pts[0][0] for pts in obs.points.values() if pts), default=0.0)
    shifted = {g: [(t - t_start, i) for t, i in pts] for g, pts in obs.points.items()}
    out.timeline = series.timeline(shifted, 0.0, t_end - t_start)
    out.migrations = [f"{what} at {t - t_start:.1f}s" for what, t in obs.migrations]
    out.t90_s = series.time_to_fraction(out.timeline, out.final_it_s)
    return out


@dataclass
class _App:
    pids: dict[str, int]         # guest -> the process a loaded host's quota must hold
    reporters: list[str]         # guests whose AppReports measure throughput
    stop: Callable[[], list[str]]  # stop the load; the errors it ended with


@contextlib.contextmanager
def _application(scn: Scenario, stack: Stack, logs: Path,
                 site: WebSite | None) -> Iterator[_App]:
    """The scenario's application running: Patterns workers, or the web site's load."""
    tb, bus = stack.tb, stack.bus
    assert tb is not None and bus is not None
    if site is not None:
        assert isinstance(scn.workload, WebWorkload)
        tiers = scn.workload.guests
        site.start_load()

        def stop_web() -> list[str]:
            summary = site.stop_load()
            failed = int(summary.get("failed_total", 0))
            return [f"{failed} failed requests: {summary.get('failed')}"] if failed else []

        yield _App({tiers[t]: site.procs[t].pid for t in ("front", "app", "db", "img")},
                   [tiers["client"]], stop_web)
        return
    assert isinstance(scn.workload, Workload)
    guests = list(scn.guests)
    with PatternsRun(tb, guests, replace(scn.workload, duration_s=0.0), bus,
                     logs=logs) as run:

        def stop_patterns() -> list[str]:
            codes = _stop_all(run)
            # -15: SIGTERM met a worker already ending on its own (handlers are gone then).
            return [f"{g}: worker exit code {c}" for g, c in codes.items()
                    if c not in (0, -signal.SIGTERM)]

        yield _App({g: p.pid for g, p in run.procs.items()}, guests, stop_patterns)


def _stop_all(run: PatternsRun) -> dict[str, int]:
    """SIGTERM every worker at once (each ends cleanly at an iteration boundary), then reap."""
    for p in run.procs.values():
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    return {g: stop_process(p, 15.0) for g, p in run.procs.items()}


async def _until_reporting(obs: Observer, guests: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(len(obs.points.get(g, ())) < 1 for g in guests):
        if time.monotonic() > deadline:
            silent = [g for g in guests if not obs.points.get(g)]
            raise TimeoutError(f"workers in {', '.join(silent)} sent no report within"
                               f" {timeout:g}s (see patterns-*.log)")
        await obs.pump(0.25)


async def _pump(obs: Observer, load: CpuLoad | None, seconds: float) -> None:
    """Read the bus for seconds; a loaded host's quota follows its guests."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        await obs.pump(min(0.5, left))
        if load is not None:
            load.place(obs.where)


async def _sweep(stack: Stack, scn: Scenario, obs: Observer, timing: Timing,
                 progress: Progress, out: Measurement) -> None:
    """Throughput with at most k fast-path links, k = 0, 1, ... until every pair has one."""
    hosts = sorted(set(scn.placement))
    pairs = len(hosts) * (len(hosts) - 1) // 2
    for k in range(pairs + 1):
        if k:
            stack.start_planner([*common_planner_args(), "--algorithm", "noop", "--share", "-1",
                                 "--max-links", str(k)])
            deadline = time.monotonic() + timing.sweep_links_timeout_s
            while obs.links() < k and time.monotonic() < deadline:
                await obs.pump(0.5)
        await obs.pump(timing.sweep_settle_s)
        start = time.monotonic() - obs.t0
        await obs.pump(timing.sweep_window_s)
        end = time.monotonic() - obs.t0
        it_s = series.rate(obs.points, start, end)
        out.steps.append({"max_links": k, "links_up": obs.links(), "it_s": round(it_s, 3),
                          "window_s": [round(start, 1), round(end, 1)]})
        progress(f"  {scn.key}: max-links {k}: {obs.links()} links up, {it_s:.1f} it/s")
