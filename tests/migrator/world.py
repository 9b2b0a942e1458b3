"""The migrator tests' world: a testbed, a broker, forwarders, a migrator, a bus watcher.

proxy, h1, h2 and h3 on one site; g1 on h1, g2 on h2 (the guest that moves),
g3 on the proxy; h3 starts empty. Everything is stopped on exit, even after
errors.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from services.bus import topics
from services.bus.client import BusClient
from services.bus.launch import Launcher
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings
from services.forwarder.launch import start_forwarder
from services.migrator.launch import start_migrator
from services.testbed.spec import TestbedSpec
from services.testbed.testbed import Testbed

HOSTS = ("proxy", "h1", "h2", "h3")
SPEC = {
    "site": [{"name": "c"}],
    "host": [{"name": "proxy", "site": "c", "proxy": True}]
    + [{"name": h, "site": "c"} for h in HOSTS[1:]],
    "guest": [{"name": "g1", "host": "h1"}, {"name": "g2", "host": "h2"},
              {"name": "g3", "host": "proxy"}],
}


@dataclass
class World:
    tb: Testbed
    bus: BusSettings
    logs: Path
    journal: Path
    forwarders: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    migrator: subprocess.Popen[bytes] | None = None

    def start_forwarder(self, host: str) -> None:
        self.forwarders[host] = start_forwarder(
            self.tb, host, self.bus, log=self.logs / f"forwarder-{host}.log",
            extra=["--state-interval-s", "0.5", "--keepalive-s", "0.2",
                   "--bus-heartbeat-s", "0.5"])

    def kill_forwarder(self, host: str, sig: int = signal.SIGKILL) -> None:
        proc = self.forwarders.pop(host)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()

    def start_migrator(self, extra: list[str] | None = None, backend: str = "netns") -> None:
        self.migrator = start_migrator(self.tb, self.bus, log=self.logs / "migrator.log",
                                       journal=self.journal, backend=backend, extra=extra)

    def kill_migrator(self, sig: int = signal.SIGKILL) -> None:
        proc, self.migrator = self.migrator, None
        if proc is not None:
            if proc.poll() is None:
                os.killpg(proc.pid, sig)
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()

    def iface_host(self, guest: str) -> list[str]:
        """The host namespaces that hold the guest's veth end (exactly one, always)."""
        ifname = self.tb.guest(guest).host_ifname
        return [h for h in HOSTS if subprocess.run(
            ["ip", "-n", self.tb.host_netns(h), "link", "show", "dev", ifname],
            capture_output=True, check=False).returncode == 0]

    def ping(self, src: str, dst: str, count: int = 3) -> bool:
        r = self.tb.run(self.tb.guest(src).netns,
                        ["ping", "-c", str(count), "-i", "0.2", "-W", "1",
                         self.tb.guest(dst).ip.split("/")[0]], check=False, timeout=30)
        return r.returncode == 0

    def logs_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.logs.glob("*.log")))


@contextmanager
def build_world(logs: Path, migrator_extra: list[str] | None = None) -> Iterator[World]:
    with ExitStack() as stack:
        tb = stack.enter_context(Testbed(TestbedSpec.from_dict(SPEC, name="migrate")))
        launcher = stack.enter_context(Launcher())
        with open(logs / "broker.log", "ab") as err:
            broker = launcher.start_broker_ipc(tb.run_dir, stderr=err.fileno())
        bus = BusSettings(pub=str(broker.info["pub"]), sub=str(broker.info["sub"]))
        world = World(tb, bus, logs, logs / "journal")

        def stop_all() -> None:
            world.kill_migrator(signal.SIGTERM)
            for host in list(world.forwarders):
                world.kill_forwarder(host, signal.SIGTERM)

        stack.callback(stop_all)
        for host in HOSTS:
            world.start_forwarder(host)
        world.start_migrator(migrator_extra)
        yield world


class Watcher:
    """Migration statuses and forwarder states from the bus."""

    def __init__(self, bus: BusSettings) -> None:
        self.client = BusClient(bus, "test", "migrate")
        self.client.subscribe(topics.MIGRATION + ".")
        self.client.subscribe(topics.STATE + ".")
        self.statuses: list[pb.MigrationStatus] = []
        self.states: dict[str, pb.ForwarderState] = {}
        self.live_log: list[tuple[float, str, tuple[str, ...]]] = []  # (t, host, live guests)

    async def __aenter__(self) -> Watcher:
        await self.client.ready()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.client.close()

    async def poll(self, timeout: float) -> None:
        for msg in await self.client.recv_batch(max(0.0, timeout)):
            if isinstance(msg.payload, pb.MigrationStatus):
                self.statuses.append(msg.payload)
            elif isinstance(msg.payload, pb.ForwarderState):
                st = msg.payload
                self.states[st.host] = st
                self.live_log.append((time.monotonic(), st.host,
                                      tuple(sorted(g.id for g in st.guests))))

    async def poll_for(self, seconds: float) -> None:
        """Take in what comes for this long."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await self.poll(left)

    async def until(self, what: Callable[[], bool], timeout: float, why: str) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {why}")
            await self.poll(min(left, 0.2))

    def outcome(self, mid: str) -> pb.MigrationStatus | None:
        for s in self.statuses:
            if s.migration_id == mid and s.phase in (pb.MIGRATION_PHASE_DONE,
                                                      pb.MIGRATION_PHASE_FAILED):
                return s
        return None

    async def wait_outcome(self, mid: str, timeout: float = 60.0) -> pb.MigrationStatus:
        await self.until(lambda: self.outcome(mid) is not None, timeout, f"outcome of {mid}")
        out = self.outcome(mid)
        assert out is not None
        return out

    def live_on(self, guest: str) -> list[str]:
        return sorted(h for h, st in self.states.items() if any(g.id == guest for g in st.guests))

    async def wait_states(self, hosts: tuple[str, ...] = HOSTS, timeout: float = 20.0) -> None:
        await self.until(lambda: all(h in self.states for h in hosts), timeout, "all states")

    def request(self, mid: str, guest: str, to_host: str) -> None:
        self.client.publish(topics.CONTROL_MIGRATE, pb.MigrationRequest(
            migration_id=mid, guest_id=guest, to_host=to_host, requested_by="test"))


async def settle(seconds: float) -> None:
    """A protocol wait (states are republished every 0.5 s), not a speed assumption."""
    await asyncio.sleep(seconds)
