"""`vnet demo`: vnet adapts a running application by itself, on one machine.

Builds the demo testbed (services/testbed/specs/demo.toml: the proxy at home,
three hosts at a remote site behind a 20 Mbit/s WAN), starts the broker, a
forwarder per host and the inference, runs a Patterns ring over six guests
and measures it; then starts the planner and the migrator and shows, as they
happen, the inferred topology, the plan, the links that come up and the
migrations; measures again, cleans up and ends with
`adaptation: before X it/s, after Y it/s, speedup Zx`.
Everything it shows is on the bus too (`vnet tail --bus-sub ...`).
`vnet up SPEC` keeps such a system running for an operator; `vnet down` ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from services.bus import topics
from services.bus.client import BusClient
from services.bus.pb import vnet_pb2 as pb
from services.cli.stack import Stack, StackSettings
from services.testbed import rundir
from services.testbed.spec import SpecError, load_spec
from services.workloads.launch import PatternsRun, Workload

DEMO_SPEC = Path(__file__).resolve().parents[1] / "testbed" / "specs" / "demo.toml"


@dataclass
class Throughput:
    """Iterations per second of the application, from its workers' reports."""

    points: dict[str, list[tuple[float, int]]] = field(default_factory=dict)

    def add(self, r: pb.AppReport, now: float) -> None:
        self.points.setdefault(r.guest, []).append((now, r.iterations))

    def rate(self, since: float, until: float) -> float:
        rates = []
        for pts in self.points.values():
            inside = [p for p in pts if since <= p[0] <= until]
            if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
                (t0, i0), (t1, i1) = inside[0], inside[-1]
                rates.append((i1 - i0) / (t1 - t0))
        return sum(rates) / len(rates) if rates else 0.0


class Show:
    """Prints what the bus says, as it happens, with the demo's clock."""

    def __init__(self, client: BusClient, t0: float) -> None:
        self.client = client
        self.t0 = t0
        self.tput = Throughput()
        self.links_up: dict[str, set[str]] = {}
        self.shown_links: set[str] = set()
        self.last_event = t0
        self.plans = 0
        self.changes: set[int] = set()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", flush=True)

    async def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            for msg in await self.client.recv_batch(timeout=left):
                self.on(msg.topic, msg.payload)

    def on(self, topic: str, p: Any) -> None:
        now = time.monotonic()
        if isinstance(p, pb.AppReport):
            self.tput.add(p, now)
        elif isinstance(p, pb.TopologyChange) and p.change_id not in self.changes:
            self.changes.add(p.change_id)
            edges = ", ".join(f"{e.src}-{e.dst}" for e in p.edges)
            self.say(f"inference: topology change {p.change_id}:"
                     f" {p.shape or 'no known shape'} over {len(p.nodes)} guests ({edges})")
            self.last_event = now
        elif (isinstance(p, pb.Plan) and p.plan_id > self.plans
              and (p.links_add or p.links_remove or p.migrations or not self.plans)):
            self.plans = p.plan_id
            adds = ", ".join(f"{s.id}" for s in p.links_add) or "none"
            if p.links_remove:
                adds += "; remove links " + ", ".join(s.id for s in p.links_remove)
            moves = ", ".join(f"{m.guest_id} {m.from_host}->{m.to_host}"
                              for m in p.migrations) or "none"
            self.say(f"planner ({p.planner}): plan {p.plan_id}: add links {adds};"
                     f" migrate {moves}")
            self.last_event = now
        elif isinstance(p, pb.ForwarderState):
            up = {ls.spec.id for ls in p.links if ls.up and ls.spec.fast_path}
            self.links_up[p.host] = up
            everywhere = set().union(*self.links_up.values())
            for link in sorted(everywhere - self.shown_links):
                self.say(f"forwarder@{p.host}: fast-path link {link} up")
                self.last_event = now
            self.shown_links |= everywhere
        elif isinstance(p, pb.MigrationStatus):
            if p.phase == pb.MIGRATION_PHASE_DONE:
                self.say(f"migrator: {p.guest_id} {p.from_host} -> {p.to_host} done in"
                         f" {p.total_s * 1000:.0f} ms (downtime {p.downtime_s * 1000:.0f} ms)")
                self.last_event = now
            elif p.phase == pb.MIGRATION_PHASE_FAILED:
                self.say(f"migrator: {p.guest_id} -> {p.to_host} failed: {p.error}")
                self.last_event = now


async def _run(stack: Stack, args: argparse.Namespace, t0: float) -> tuple[float, float]:
    tb, bus = stack.tb, stack.bus
    assert tb is not None and bus is not None
    guests = [g.name for g in tb.guests()]
    client = BusClient(bus, "demo", "demo")
    for prefix in ("app.", topics.TOPOLOGY_CHANGE, topics.PLAN, topics.STATE + ".",
                   topics.MIGRATION + "."):
        client.subscribe(prefix)
    await client.ready()
    show = Show(client, t0)
    total_s = args.before_s + args.adapt_s + args.after_s + 30
    work = Workload(topology="ring", msg_bytes=args.msg_kib * 1024, compute_s=args.compute_s,
                    duration_s=total_s, report_interval_s=1.0)
    with PatternsRun(tb, guests, work, bus, logs=stack.logs) as run:
        show.say(f"Patterns ring over {len(guests)} guests ({', '.join(guests)}),"
                 f" {args.msg_kib} KiB messages, {args.compute_s * 1000:.0f} ms compute")
        # Every worker has finished an iteration: the ring runs (slow starts on a busy machine).
        deadline = time.monotonic() + 120
        while (len(show.tput.points) < len(guests) or not all(
                pts[-1][1] > 0 for pts in show.tput.points.values())):
            if time.monotonic() > deadline:
                show.say("warning: not every worker reported an iteration within 120 s")
                break
            await show.pump(0.5)
        await show.pump(args.warmup_s)
        start = time.monotonic()
        await show.pump(args.before_s)
        before = show.tput.rate(start, time.monotonic())
        show.say(f"before adaptation: {before:.1f} it/s (star through the proxy, over the WAN)")
        show.say("starting the planner and the migrator: vnet adapts by itself from here")
        stack.start_adaptation()
        adapt_end = time.monotonic() + args.adapt_s
        while time.monotonic() < adapt_end:
            await show.pump(1.0)
            quiet = time.monotonic() - show.last_event
            if show.plans and quiet > args.settle_s:
                break
        start = time.monotonic()
        await show.pump(args.after_s)
        after = show.tput.rate(start, time.monotonic())
        show.say(f"after adaptation: {after:.1f} it/s")
        dead = stack.alive()
        if dead:
            show.say(f"warning: these processes died: {', '.join(dead)}")
        run.stop()
    client.close()
    return before, after



def settings_for_spec(spec: str) -> StackSettings:
    """The spec's sites and WAN rates are what its operator knows: the planner's priors."""
    d = StackSettings()
    return replace(d, planner_args=(*d.planner_args, "--network", str(Path(spec).resolve())))


def _demo(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("vnet demo builds network namespaces: run it as root", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    spec = load_spec(args.spec)
    logs = Path(tempfile.mkdtemp(prefix="vnet-demo-"))
    print(f"[{0.0:6.1f}s] building the testbed {spec.name!r} (logs in {logs})", flush=True)
    with Stack(spec, logs, settings_for_spec(args.spec), spec_source=str(args.spec)) as stack:
        assert stack.tb is not None and stack.bus is not None
        hosts = ", ".join(stack.tb.hosts())
        print(f"[{time.monotonic() - t0:6.1f}s] up: broker, forwarders on {hosts}, inference;"
              f" watch with: vnet tail --bus-sub {stack.bus.sub}", flush=True)
        before, after = asyncio.run(_run(stack, args, t0))
        print(f"[{time.monotonic() - t0:6.1f}s] cleaning up", flush=True)
    speedup = after / before if before > 0 else float("inf")
    print(f"adaptation: before {before:.1f} it/s, after {after:.1f} it/s, speedup {speedup:.1f}x",
          flush=True)
    return 0 if before > 0 and after > 0 else 1


class _Stop(Exception):
    pass


def _up(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(args.spec)
    except (SpecError, OSError) as exc:
        print(f"vnet up: {exc}", file=sys.stderr)
        return 2

    def stop(signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise _Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    logs = Path(args.logs or tempfile.mkdtemp(prefix="vnet-up-"))
    try:
        with Stack(spec, logs, settings_for_spec(args.spec), owner_cli=True,
                   spec_source=str(args.spec)) as stack:
            assert stack.tb is not None and stack.bus is not None
            stack.start_adaptation()
            tb = stack.tb
            print(f"vnet up: testbed {tb.prefix} ({spec.name}) with broker, forwarders,"
                  " inference, planner and migrator")
            print(f"  bus:     --bus-pub {stack.bus.pub} --bus-sub {stack.bus.sub}")
            print(f"  tail:    vnet tail --bus-sub {stack.bus.sub}")
            for g in tb.guests():
                print(f"  guest {g.name}: host {g.host}, ip {g.ip}, run in it with:"
                      f" ip netns exec {g.netns} ...")
            print(f"  logs:    {logs}")
            print(f"  stop:    Ctrl-C or `vnet down {tb.prefix}`", flush=True)
            while not (dead := stack.alive()):
                time.sleep(0.5)
            print(f"vnet up: {', '.join(dead)} died; tearing down (logs in {logs})",
                  file=sys.stderr)
            return 1
    except _Stop as exc:
        print(f"vnet up: {exc}, removed", file=sys.stderr)
        return 0


def _down(args: argparse.Namespace) -> int:
    prefixes = [args.prefix] if args.prefix else [r.prefix for r in rundir.list_runs()
                                                    if r.owner_alive]
    if not prefixes:
        print("vnet down: nothing is up")
        return 0
    if len(prefixes) > 1:
        print(f"vnet down: several runs are up ({', '.join(prefixes)}): name one",
              file=sys.stderr)
        return 2
    try:
        left = rundir.down(prefixes[0])
    except (ValueError, rundir.OwnerAlive) as exc:
        print(f"vnet down: {exc}", file=sys.stderr)
        return 2
    print(f"vnet down: {prefixes[0]} removed" + (f"; left: {', '.join(left)}" if left else ""))
    return 1 if left else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="watch vnet speed up a running application by itself")
    p.add_argument("--spec", default=str(DEMO_SPEC), help="testbed spec (default: demo.toml)")
    p.add_argument("--msg-kib", type=int, default=64, help="Patterns message size (KiB)")
    p.add_argument("--compute-s", type=float, default=0.002,
                   help="Patterns compute per iteration (s)")
    p.add_argument("--warmup-s", type=float, default=4.0)
    p.add_argument("--before-s", type=float, default=15.0, help="measure before adapting")
    p.add_argument("--adapt-s", type=float, default=45.0,
                   help="at most this long for the system to adapt")
    p.add_argument("--settle-s", type=float, default=8.0,
                   help="adaptation is over after this long with no new event")
    p.add_argument("--after-s", type=float, default=15.0, help="measure after adapting")
    p.set_defaults(func=_demo)

    u = sub.add_parser("up", help="bring up a testbed with all vnet services and keep it")
    u.add_argument("spec", help="testbed spec (TOML), e.g. services/testbed/specs/wan.toml")
    u.add_argument("--logs", default="", help="directory for the services' logs")
    u.set_defaults(func=_up)
    d = sub.add_parser("down", help="stop what `vnet up` started")
    d.add_argument("prefix", nargs="?", default="", help="the run's prefix (vnet testbed ls)")
    d.set_defaults(func=_down)
