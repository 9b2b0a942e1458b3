"""The online inference tests' world: testbed, broker, forwarders, inference, traffic.

One testbed (16 guests: g1..g15 round-robin on h1, h2, h3 and g16 on the
proxy), a broker on ipc:// endpoints in the testbed's run directory, one
forwarder per host counting at 10 Hz, a real `vnet inference` process and one
traffic generator (online_traffic.py) per guest, driven over its stdin.
Everything is stopped by the context managers that started it.
"""

from __future__ import annotations

import asyncio
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

from services.bus import envelope, topics
from services.bus.client import BusClient
from services.bus.launch import Launcher, Process, stop_process
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings
from services.forwarder.launch import start_forwarder
from services.inference import shapes
from services.inference.guests import natural_key
from services.testbed.spec import TestbedSpec
from services.testbed.testbed import Testbed

ROOT = Path(__file__).resolve().parents[2]
TRAFFIC = Path(__file__).with_name("online_traffic.py")
N_GUESTS = 16
HOSTS = ("h1", "h2", "h3")
FORWARDER_RATE_HZ = 10
# Inference knobs: short so the tests are quick. A change shows within one
# window; a second change within DAMPING_S of a report counts as flapping.
UPDATE_RATE_HZ = 10
WINDOW_S = 1.0
DAMPING_S = 3.0
# The latest change is repeated every REPUBLISH_S (same change_id): listeners
# take each change_id once.
REPUBLISH_S = 2.0
INFERENCE_ARGS = [
    "--update-rate-hz", str(UPDATE_RATE_HZ), "--smoothing-window-s", str(WINDOW_S),
    "--damping-s", str(DAMPING_S), "--prune-fraction", "0.1", "--detection-threshold", "0.1",
    "--matrix-period-s", "0.5", "--change-republish-s", str(REPUBLISH_S),
    "--bus-heartbeat-s", "0.2",
]
# Background chatter (under the pruning threshold): unicast from a few guests
# to guests they have no edge with in most topologies, broadcast from two.
CHATTER = {"g13": "g2", "g14": "g7", "g15": "g10", "g16": "g4"}
BROADCASTERS = ("g13", "g16")
BROADCAST_IP = "10.10.255.255"

Edge = tuple[str, str]


def host_of(guest_number: int) -> str:
    return "proxy" if guest_number == N_GUESTS else HOSTS[(guest_number - 1) % len(HOSTS)]


SPEC = {
    "guest_mtu": 1400,
    "site": [{"name": "c"}],
    "host": [{"name": "proxy", "site": "c", "proxy": True}]
    + [{"name": h, "site": "c"} for h in HOSTS],
    "guest": [{"name": f"g{i}", "host": host_of(i)} for i in range(1, N_GUESTS + 1)],
}


def edge(a: str, b: str) -> Edge:
    x, y = sorted((a, b), key=natural_key)
    return (x, y)


def shape_edges(shape: str, n: int) -> set[Edge]:
    """The generated shape over guests g1..gn (node k is guest g{k+1})."""
    return graph_edges(shapes.generate(shape, n))


def graph_edges(g: nx.Graph) -> set[Edge]:
    return {edge(f"g{a + 1}", f"g{b + 1}") for a, b in g.edges}


def change_edges(change: pb.TopologyChange) -> set[Edge]:
    return {edge(e.src, e.dst) for e in change.edges}


@dataclass
class World:
    tb: Testbed
    bus: BusSettings
    launcher: Launcher
    logs: Path
    inference: Process | None = None
    forwarders: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    generators: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    edges: set[Edge] = field(default_factory=set)
    # Test-process clock of the last topology.change a test saw: a new
    # traffic pattern must start DAMPING_S after it or it counts as flapping.
    last_report_t: float = -math.inf
    primed: bool = False  # the first report (chatter only) has passed
    # change_ids any listener of this world has taken: a repeat is no change.
    changes_seen: set[int] = field(default_factory=set)

    # ------------------------------------------------------------ processes

    def start_forwarder(self, host: str) -> None:
        self.forwarders[host] = start_forwarder(
            self.tb, host, self.bus, log=self.logs / f"forwarder-{host}.log",
            extra=["--update-rate-hz", str(FORWARDER_RATE_HZ), "--state-interval-s", "0.5",
                   "--keepalive-s", "0.2", "--bus-heartbeat-s", "0.5"])

    def stop_forwarder(self, host: str, sig: int = signal.SIGTERM) -> None:
        proc = self.forwarders.pop(host)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()

    def start_inference(self) -> None:
        with open(self.logs / "inference.log", "ab") as err:
            self.inference = self.launcher.start(
                "inference",
                ["inference", "--host", "online", "--bus-pub", self.bus.pub,
                 "--bus-sub", self.bus.sub, *INFERENCE_ARGS],
                stderr=err.fileno())

    def start_generator(self, guest: str) -> None:
        g = self.tb.guest(guest)
        argv = [sys.executable, str(TRAFFIC), "--rate-hz", "20", "--size", "400"]
        if guest in BROADCASTERS:
            argv += ["--broadcast", BROADCAST_IP]
        with open(self.logs / f"traffic-{guest}.log", "ab") as err:
            proc: subprocess.Popen[bytes] = self.tb.popen(
                g.netns, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                cwd=str(ROOT))
        self.generators[guest] = proc
        self._expect(guest, b"ready")
        if guest in CHATTER:
            self._command(guest, f"chatter {self.tb.guest(CHATTER[guest]).ip}")

    def _expect(self, guest: str, word: bytes, timeout: float = 20.0) -> None:
        proc = self.generators[guest]
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline().strip() if ready else b""
        if line != word:
            raise AssertionError(
                f"traffic generator in {guest} said {line!r}, not {word!r}"
                f" (exit {proc.poll()})")

    def _command(self, guest: str, line: str) -> None:
        proc = self.generators[guest]
        assert proc.stdin is not None
        proc.stdin.write(line.encode() + b"\n")
        proc.stdin.flush()

    # ------------------------------------------------------------ traffic

    def set_edges(self, edges: Iterable[Edge]) -> None:
        """Make the guests talk in this topology (both ends of each edge send)."""
        self.edges = set(edges)
        peers: dict[str, list[str]] = {g: [] for g in self.generators}
        for a, b in sorted(self.edges):
            peers[a].append(self.tb.guest(b).ip)
            peers[b].append(self.tb.guest(a).ip)
        for guest, ips in peers.items():
            self._command(guest, " ".join(["peers", *ips]))
        for guest in peers:
            self._expect(guest, b"ok")

    async def wait_out_damping(self) -> None:
        """Let DAMPING_S pass since the last report, so a new pattern is no flap.

        A protocol wait (the damping rule), not a settling sleep.
        """
        left = self.last_report_t + DAMPING_S + 0.5 - time.monotonic()
        if left > 0:
            await asyncio.sleep(left)


@contextmanager
def build_world(logs: Path) -> Iterator[World]:
    """Everything up and ready; everything stopped on exit, even after errors."""
    with ExitStack() as stack:
        tb = stack.enter_context(Testbed(TestbedSpec.from_dict(SPEC, name="online")))
        launcher = stack.enter_context(Launcher())
        with open(logs / "broker.log", "ab") as err:
            broker = launcher.start_broker_ipc(tb.run_dir, stderr=err.fileno())
        bus = BusSettings(pub=str(broker.info["pub"]), sub=str(broker.info["sub"]))
        world = World(tb, bus, launcher, logs)

        def stop_generators() -> None:
            for proc in world.generators.values():
                stop_process(proc, 10)

        def stop_forwarders() -> None:
            for host in list(world.forwarders):
                world.stop_forwarder(host)

        stack.callback(stop_forwarders)
        stack.callback(stop_generators)
        for host in ("proxy", *HOSTS):
            world.start_forwarder(host)
        world.start_inference()
        for i in range(1, N_GUESTS + 1):
            world.start_generator(f"g{i}")
        yield world


# ---------------------------------------------------------------- the bus side


class Listener:
    """Reads topology.change and the inference's heartbeats from the bus.

    The inference repeats its latest change every REPUBLISH_S with the same
    change_id: each change_id is taken once (share ``seen`` between the
    listeners of one world, so a repeat of what an earlier one took is no
    change either).
    """

    def __init__(self, bus: BusSettings, seen: set[int] | None = None) -> None:
        self.client = BusClient(bus, "test", "online")
        self.client.subscribe(topics.TOPOLOGY_CHANGE)
        self.client.subscribe(topics.join(topics.HEARTBEAT, "inference"))
        self.counters: dict[str, int] = {}
        self.pending: deque[pb.TopologyChange] = deque()  # received, not yet taken
        self.seen = set() if seen is None else seen

    async def __aenter__(self) -> Listener:
        await self.client.ready()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.client.close()

    async def _poll(self, timeout: float) -> None:
        for msg in await self.client.recv_batch(max(0.0, timeout)):
            if isinstance(msg.payload, pb.TopologyChange):
                if msg.payload.change_id not in self.seen:
                    self.seen.add(msg.payload.change_id)
                    self.pending.append(msg.payload)
            elif isinstance(msg.payload, pb.Heartbeat):
                self.counters = dict(msg.payload.counters)

    async def next_change(self, timeout: float) -> pb.TopologyChange:
        deadline = time.monotonic() + timeout
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no topology.change within {timeout}s")
            await self._poll(left)
        return self.pending.popleft()

    async def watch(self, seconds: float) -> list[pb.TopologyChange]:
        """Every topology change not taken yet and those in the next `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await self._poll(left)
        out = list(self.pending)
        self.pending.clear()
        return out

    async def heartbeat(self, timeout: float = 10.0) -> dict[str, int]:
        """The counters of the next inference heartbeat."""
        self.counters = {}
        deadline = time.monotonic() + timeout
        while not self.counters:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no inference heartbeat within {timeout}s")
            await self._poll(left)
        return self.counters

    async def counter_above(self, name: str, above: int, timeout: float) -> dict[str, int]:
        """Heartbeat counters once `name` is above `above`."""
        deadline = time.monotonic() + timeout
        while True:
            counters = await self.heartbeat(max(0.1, deadline - time.monotonic()))
            if counters.get(name, 0) > above:
                return counters
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"inference counter {name} stayed at {counters.get(name, 0)}"
                    f" (not above {above}) for {timeout}s")


class ReplayClient(BusClient):
    """A rogue client that publishes under another client's envelope instance.

    The inference tells forwarder instances apart by it, so this one's counts
    read as coming from the same forwarder run: out of order if their interval
    index is old.
    """

    def __init__(self, bus: BusSettings, instance: int, name: str) -> None:
        # Its own source name per use: the bus tracks (source, topic) sequence
        # numbers per instance, and a reused name would start again at 1, stale.
        super().__init__(bus, "rogue", name)
        self.instance = instance
        self._encoder = envelope.Encoder(self.source, instance)
