"""The planner's online world: testbed, broker, forwarders, inference, planner, traffic.

One testbed (a proxy with guest gp; h1 with g1, g2; h2 with g3, g4; h3 with
g5, g6), a broker on ipc:// endpoints in the testbed's run directory (they
reach into every namespace through the filesystem), a forwarder per host
counting at 10 Hz, a real `vnet inference` with a one-second window and a
real `vnet planner` that never migrates (the no-op placement planner: the
migrator does not exist yet, so only links and rules are under test).
Traffic is UDP from online_traffic.py inside the guests. Everything is
stopped by the context manager that started it, even after errors.
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from services.bus import topics
from services.bus.client import BusClient
from services.bus.launch import Launcher, Process, stop_process
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings
from services.forwarder.launch import start_forwarder
from services.testbed.spec import TestbedSpec
from services.testbed.testbed import Testbed

ROOT = Path(__file__).resolve().parents[2]
TRAFFIC = Path(__file__).with_name("online_traffic.py")
HOSTS = ("proxy", "h1", "h2", "h3")
GUESTS = {"gp": "proxy", "g1": "h1", "g2": "h1", "g3": "h2", "g4": "h2", "g5": "h3",
          "g6": "h3"}
SPEC = {
    "guest_mtu": 1400,
    "site": [{"name": "c"}],
    "host": [{"name": h, "site": "c", "proxy": h == "proxy"} for h in HOSTS],
    "guest": [{"name": g, "host": h} for g, h in GUESTS.items()],
}
PLANNER_HOST = "ctl"
FORWARDER_ARGS = ["--update-rate-hz", "10", "--state-interval-s", "0.5", "--keepalive-s", "0.2",
                  "--bus-heartbeat-s", "0.5"]
# A change shows within one window; the pruning keeps edges down to 0.1 % of
# the strongest, so light traffic stays in the topology the planner sees.
# Its latest change is repeated every second (same change_id), so a planner
# that starts late still gets it soon.
INFERENCE_ARGS = ["--update-rate-hz", "10", "--smoothing-window-s", "1", "--damping-s", "1",
                  "--prune-fraction", "0.001", "--detection-threshold", "0.1",
                  "--matrix-period-s", "0.5", "--change-republish-s", "1",
                  "--bus-heartbeat-s", "0.5"]
# Links until 90 % of inter-host traffic is on direct links; plans quickly and
# republishes often, so a test waits seconds, not the defaults' tens.
# Forwarders send state every 0.5 s here: a planner has all of it after 1.5 s.
PLANNER_ARGS = ["--algorithm", "noop", "--share", "0.9", "--republish-s", "1",
                "--min-interval-s", "0.5", "--settle-s", "1.5", "--bus-heartbeat-s", "0.5"]

Pair = tuple[str, str]
T = TypeVar("T")


def pair(a: str, b: str) -> Pair:
    x, y = sorted((a, b))
    return (x, y)


@dataclass
class World:
    tb: Testbed
    bus: BusSettings
    launcher: Launcher
    logs: Path
    forwarders: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    sinks: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    flows: dict[Pair, subprocess.Popen[bytes]] = field(default_factory=dict)
    inference: Process | None = None
    planner: Process | None = None

    # ------------------------------------------------------------ processes

    def start_forwarder(self, host: str) -> None:
        self.forwarders[host] = start_forwarder(
            self.tb, host, self.bus, log=self.logs / f"forwarder-{host}.log",
            extra=FORWARDER_ARGS)

    def stop_forwarder(self, host: str) -> None:
        stop_process(self.forwarders.pop(host), 10)

    def start_inference(self) -> None:
        with open(self.logs / "inference.log", "ab") as err:
            self.inference = self.launcher.start(
                "inference", ["inference", "--host", "online", *self._bus_args(),
                              *INFERENCE_ARGS], stderr=err.fileno())

    def start_planner(self) -> None:
        """Start `vnet planner` once (a second call finds it running)."""
        if self.planner is not None and self.planner.popen.poll() is None:
            return
        with open(self.logs / "planner.log", "ab") as err:
            self.planner = self.launcher.start(
                "planner", ["planner", "--host", PLANNER_HOST, *self._bus_args(),
                            *PLANNER_ARGS], stderr=err.fileno())

    def stop_planner(self) -> None:
        if self.planner is not None:
            self.planner.stop()
            self.planner = None

    def _bus_args(self) -> list[str]:
        return ["--bus-pub", self.bus.pub, "--bus-sub", self.bus.sub]

    def _guest_script(self, guest: str, args: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(self.logs / log, "ab") as err:
            proc: subprocess.Popen[bytes] = self.tb.popen(
                self.tb.guest(guest).netns, [sys.executable, str(TRAFFIC), *args],
                stdout=subprocess.PIPE, stderr=err, cwd=str(ROOT))
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20.0)
        line = proc.stdout.readline().strip() if ready else b""
        if line != b"ready":
            stop_process(proc, 10)
            raise AssertionError(f"traffic script in {guest} ({args[0]}) said {line!r}"
                                 f" (exit {proc.poll()}; see {self.logs / log})")
        return proc

    def start_flow(self, src: str, dst: str, pps: float, size: int) -> bool:
        """UDP from guest src to guest dst (a sink discards it there); once per pair:
        False when it runs already."""
        running = self.flows.get((src, dst))
        if running is not None and running.poll() is None:
            return False
        if dst not in self.sinks:
            self.sinks[dst] = self._guest_script(dst, ["sink"], f"sink-{dst}.log")
        self.flows[(src, dst)] = self._guest_script(
            src, ["flow", "--to", self.tb.guest(dst).ip, "--pps", str(pps),
                  "--size", str(size)], f"flow-{src}-{dst}.log")
        return True

    def pin_neighbours(self) -> None:
        """Permanent ARP entries in every guest: no broadcast, no lapse while a host is down."""
        guests = self.tb.guests()
        for g in guests:
            batch = "".join(f"neigh replace {o.ip} lladdr {o.mac} dev eth0 nud permanent\n"
                            for o in guests if o.name != g.name)
            self.tb.run(g.netns, ["ip", "-batch", "-"], input=batch)

    def dead(self) -> list[str]:
        """The services that should be running and are not."""
        procs: dict[str, subprocess.Popen[bytes]] = {
            f"forwarder {h}": p for h, p in self.forwarders.items()}
        for proc in (self.inference, self.planner):
            if proc is not None:
                procs[proc.name] = proc.popen
        return sorted(name for name, p in procs.items() if p.poll() is not None)

    def stop_traffic(self) -> None:
        for proc in [*self.flows.values(), *self.sinks.values()]:
            stop_process(proc, 10)
        self.flows.clear()
        self.sinks.clear()


@contextmanager
def build_world(logs: Path) -> Iterator[World]:
    """Testbed, broker, forwarders and inference up; the planner and traffic are
    the tests' to start. Everything stopped on exit, even after errors."""
    with ExitStack() as stack:
        tb = stack.enter_context(Testbed(TestbedSpec.from_dict(SPEC, name="planonline")))
        launcher = stack.enter_context(Launcher())
        with open(logs / "broker.log", "ab") as err:
            broker = launcher.start_broker_ipc(tb.run_dir, stderr=err.fileno())
        bus = BusSettings(pub=str(broker.info["pub"]), sub=str(broker.info["sub"]))
        world = World(tb, bus, launcher, logs)

        def stop_forwarders() -> None:
            for host in list(world.forwarders):
                world.stop_forwarder(host)

        stack.callback(stop_forwarders)
        stack.callback(world.stop_traffic)
        world.pin_neighbours()
        for host in HOSTS:
            world.start_forwarder(host)
        world.start_inference()
        yield world


# ---------------------------------------------------------------- the bus side


@dataclass(frozen=True)
class LinkSample:
    ts: float  # the forwarder's clock (envelope timestamp)
    links: dict[str, pb.LinkMeasurement]


@dataclass(frozen=True)
class Delta:
    tx: int  # frames sent on the link during the window
    rx: int


def fast_pairs(plan: pb.Plan) -> set[Pair]:
    """Host pairs joined by a fast-path link in the plan's desired states."""
    return {pair(d.host, link.peer_host) for d in plan.desired for link in d.links}


def desired_of(plan: pb.Plan, host: str) -> pb.DesiredState:
    for d in plan.desired:
        if d.host == host:
            return d
    raise AssertionError(f"plan {plan.plan_id} has no desired state for {host}:"
                         f" {[d.host for d in plan.desired]}")


def change_edges(change: pb.TopologyChange) -> set[Pair]:
    return {pair(e.src, e.dst) for e in change.edges}


def link_to(state: pb.ForwarderState, peer: str) -> pb.LinkStatus | None:
    for link in state.links:
        if link.spec.peer_host == peer:
            return link
    return None


class Watcher:
    """Keeps the latest plans, changes, states, link samples and heartbeats."""

    def __init__(self, bus: BusSettings, logs: Path | None = None) -> None:
        self.logs = logs  # named in failure messages
        self.client = BusClient(bus, "test", "planonline")
        for prefix in (topics.PLAN, topics.TOPOLOGY_CHANGE, topics.TRAFFIC_MATRIX,
                       topics.STATE + ".",
                       topics.LINKS + ".", topics.HEARTBEAT + "."):
            self.client.subscribe(prefix)
        self.plans: deque[pb.Plan] = deque(maxlen=100)
        self.plan_instances: deque[int] = deque(maxlen=100)  # the sender's, per plan
        self.plans_seen = 0
        self.changes: deque[pb.TopologyChange] = deque(maxlen=100)  # each change_id once
        self.matrix: pb.TrafficMatrix | None = None
        self.states: dict[str, pb.ForwarderState] = {}
        self.samples: dict[str, deque[LinkSample]] = {}
        self.samples_seen: dict[str, int] = {}
        self.heartbeats: dict[str, pb.Heartbeat] = {}
        self.instances: dict[str, int] = {}  # latest envelope instance per heartbeat source

    async def __aenter__(self) -> Watcher:
        await self.client.ready()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.client.close()

    async def poll(self, timeout: float) -> None:
        for msg in await self.client.recv_batch(timeout=max(0.0, timeout)):
            p = msg.payload
            if isinstance(p, pb.Plan):
                self.plans.append(p)
                self.plan_instances.append(msg.instance)
                self.plans_seen += 1
            elif isinstance(p, pb.TopologyChange):
                # The inference repeats its latest change: keep each change_id once.
                if not any(c.change_id == p.change_id for c in self.changes):
                    self.changes.append(p)
            elif isinstance(p, pb.TrafficMatrix):
                self.matrix = p
            elif isinstance(p, pb.ForwarderState):
                self.states[p.host] = p
            elif isinstance(p, pb.LinkMeasurements):
                q = self.samples.setdefault(p.host, deque(maxlen=50))
                q.append(LinkSample(msg.ts, {m.link_id: m for m in p.links}))
                self.samples_seen[p.host] = self.samples_seen.get(p.host, 0) + 1
            elif isinstance(p, pb.Heartbeat):
                self.heartbeats[msg.source] = p
                self.instances[msg.source] = msg.instance

    async def until(self, check: Callable[[], T | None], what: str,
                    timeout: float = 20.0) -> T:
        """The first non-None result of check, polling the bus; fail after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got is not None:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout}s\n{self.summary()}")
            await self.poll(min(left, 0.5))

    def summary(self) -> str:
        """What the bus last said, for failure messages."""
        lines = [f"logs: {self.logs}"] if self.logs else []
        for c in list(self.changes)[-3:]:
            lines.append(f"change {c.change_id}: " + ", ".join(
                f"{e.src}-{e.dst} {e.bytes_per_s:.0f}B/s" for e in c.edges))
        for instance, plan in list(zip(self.plan_instances, self.plans, strict=True))[-2:]:
            lines.append(f"plan {plan.plan_id} (instance {instance:x}) from change"
                         f" {plan.based_on_change}: links {sorted(fast_pairs(plan))}")
        for host, st in sorted(self.states.items()):
            links = ", ".join(f"{ls.spec.id}{'^' if ls.up else 'v'}" for ls in st.links)
            lines.append(f"state.{host}: generation {st.generation}, links {links},"
                         f" {len(st.rules)} rules")
        return "\n".join(lines)

    # ------------------------------------------------------------ questions

    def latest_change(self, edges: Iterable[Pair], after: int = 0) -> pb.TopologyChange | None:
        """The newest change above id `after` holding all of `edges`."""
        want = set(edges)
        for change in reversed(self.changes):
            if change.change_id > after and want <= change_edges(change):
                return change
        return None

    def plan_after(self, change_id: int) -> pb.Plan | None:
        """The newest plan made from change `change_id` or a later one."""
        for plan in reversed(self.plans):
            if plan.based_on_change >= change_id:
                return plan
        return None

    def rate(self, src: str, dst: str) -> float:
        """src -> dst bytes/s in the latest traffic matrix (0 when absent)."""
        m = self.matrix
        if m is None or src not in m.nodes or dst not in m.nodes:
            return 0.0
        n = len(m.nodes)
        return float(m.values[list(m.nodes).index(src) * n + list(m.nodes).index(dst)])

    def last_change_id(self) -> int:
        return max((c.change_id for c in self.changes), default=0)

    def heartbeat(self, source: str) -> pb.Heartbeat | None:
        return self.heartbeats.get(source)

    async def deltas(self, hosts: Iterable[str], seconds: float,
                     timeout: float = 20.0) -> dict[str, dict[str, Delta]]:
        """Per host and link, the frames counted over at least `seconds`, from
        two links.<host> reports that arrived after this call."""
        names = tuple(hosts)
        seen = {h: self.samples_seen.get(h, 0) for h in names}

        def fresh() -> dict[str, LinkSample] | None:
            if all(self.samples_seen.get(h, 0) > seen[h] for h in names):
                return {h: self.samples[h][-1] for h in names}
            return None

        first = await self.until(fresh, f"links reports of {names}", timeout)

        def later() -> dict[str, LinkSample] | None:
            last = {h: self.samples[h][-1] for h in names}
            return last if all(last[h].ts >= first[h].ts + seconds for h in names) else None

        last = await self.until(later, f"links reports of {names} {seconds}s on", timeout)
        out: dict[str, dict[str, Delta]] = {}
        for h in names:
            a, b = first[h].links, last[h].links
            out[h] = {
                link: Delta(tx=m.tx_frames - (a[link].tx_frames if link in a else 0),
                            rx=m.rx_frames - (a[link].rx_frames if link in a else 0))
                for link, m in b.items()
            }
        return out
