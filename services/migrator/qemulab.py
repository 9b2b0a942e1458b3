"""A QEMU migration lab on the embedded testbed, for the tests, the bench and demos.

proxy + h1 + h2 as namespaces, a broker, a forwarder per host, the tiny VM
`vm1` (`make vm`) in the vmdir layout attached to h1's forwarder, a namespace
guest g1 on the proxy host to ping it, and `vnet migrator --backend qemu`
processes started on demand. Everything is stopped on exit, even after
errors: processes by handle, QEMU by pid file, namespaces by the testbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.bus import topics
from services.bus.client import BusClient
from services.bus.launch import VNET, Launcher, Process, stop_process
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings
from services.forwarder.launch import ROOT, start_forwarder
from services.migrator import vmdir
from services.migrator.qmp import connect_quietly
from services.testbed import qemu as testbed_qemu
from services.testbed.spec import TestbedSpec
from services.testbed.testbed import Testbed

SPEC = {
    "site": [{"name": "a"}],
    "host": [{"name": "proxy", "site": "a", "proxy": True}, {"name": "h1", "site": "a"},
             {"name": "h2", "site": "a"}],
    "guest": [{"name": "g1", "host": "proxy"}],
}
VM_ID = "vm1"
VM_MAC = "02:76:6e:00:c8:01"
VM_IP = "10.10.200.1"
PING_INTERVAL_S = 0.005
_REPLY = re.compile(rb"^\[(\d+\.\d+)\] \d+ bytes from [^:]+: icmp_seq=(\d+) ")
_SENT = re.compile(rb"(\d+) packets transmitted")


def unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if testbed_qemu.qemu_binary() is None:
        return "qemu-system-x86_64 missing (Debian: qemu-system-x86)"
    if testbed_qemu.vm_images() is None:
        return "no test VM in build/vm: `make vm` builds it"
    return None


@dataclass(frozen=True)
class PingStats:
    """What a ping flood saw: the guest-visible gap is the longest silence."""

    interval_s: float
    sent: int
    received: int
    longest_missing_run: int  # consecutive unanswered sequence numbers
    longest_reply_gap_s: float  # longest time between two replies

    @property
    def gap_s(self) -> float:
        """Longest run of missing replies × the interval (the issue's measure)."""
        return self.longest_missing_run * self.interval_s

    def as_dict(self) -> dict[str, float | int]:
        return {"interval_ms": self.interval_s * 1000, "sent": self.sent,
                "received": self.received, "longest_missing_run": self.longest_missing_run,
                "gap_ms": round(self.gap_s * 1000, 1),
                "longest_reply_gap_ms": round(self.longest_reply_gap_s * 1000, 1)}


def parse_ping(text: bytes, interval_s: float) -> PingStats:
    """Parse `ping -D` output: replies by sequence number and time."""
    replies: dict[int, float] = {}
    sent = 0
    for line in text.splitlines():
        m = _REPLY.match(line)
        if m:
            replies.setdefault(int(m.group(2)), float(m.group(1)))
            continue
        s = _SENT.search(line)
        if s:
            sent = int(s.group(1))
    seqs = sorted(replies)
    run = 0
    for a, b in itertools.pairwise(seqs):
        run = max(run, b - a - 1)
    times = sorted(replies.values())
    gap = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
    return PingStats(interval_s, sent, len(replies), run, gap)


class PingFlood:
    """`ping -i 0.005` from a namespace guest, logged with timestamps, stopped by SIGINT."""

    def __init__(self, tb: Testbed, guest: str, ip: str, log: Path,
                 interval_s: float = PING_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.log = log
        with open(log, "wb") as out:
            self.proc: subprocess.Popen[bytes] = tb.popen(
                tb.guest(guest).netns, ["ping", "-D", "-n", "-i", f"{interval_s:g}", ip],
                stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> PingStats:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # ping prints its summary
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                stop_process(self.proc, 1)
        return parse_ping(self.log.read_bytes(), self.interval_s)


@dataclass
class QemuLab:
    tb: Testbed
    bus: BusSettings
    launcher: Launcher
    logs: Path
    qemu_dir: Path
    location: str = "h1"  # where vm1 lives now (the tests keep it up to date)
    forwarders: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def bus_args(self) -> list[str]:
        return ["--bus-pub", self.bus.pub, "--bus-sub", self.bus.sub]

    def other_host(self) -> str:
        return "h2" if self.location == "h1" else "h1"

    def start_migrator(self, *extra: str, journal: str = "journal",
                       timeout: float = 15.0) -> Process:
        """`vnet migrator --backend qemu`, waited for until it is on the bus."""
        with open(self.logs / "migrator.log", "ab") as err:
            proc = self.launcher.start(
                "migrator", ["migrator", "--backend", "qemu", "--qemu-dir", str(self.qemu_dir),
                             "--journal", str(self.tb.run_dir / journal), "--host", "migrator",
                             "--no-plans", *self.bus_args(), *extra],
                stdout=subprocess.PIPE, stderr=err.fileno())
        assert proc.popen.stdout is not None
        ready, _, _ = select.select([proc.popen.stdout], [], [], timeout)
        line = proc.popen.stdout.readline() if ready else b""
        if b'"ready": true' not in line:
            tail = (self.logs / "migrator.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"migrator not ready in {timeout}s: {tail}")
        asyncio.run(self._await_states(timeout))
        return proc

    async def _await_states(self, timeout: float) -> None:
        """Until the migrator knows the forwarders' states: where vm1 is, and the host it
        may go to. Probes refused for a reason other than an unknown guest or host tell
        (refusals change nothing): vm1 to where it is, and a guest that does not exist
        to the other host (a fresh migrator hears each forwarder within a state interval,
        so knowing vm1's host says nothing of the other's)."""
        probes = {self.location: VM_ID, self.other_host(): "lab-no-such-guest"}
        with BusClient(self.bus, "qemulab", "lab") as client:
            client.subscribe(topics.MIGRATION + ".")
            await client.ready()
            deadline = time.monotonic() + timeout
            for n in itertools.count():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the migrator did not learn of {sorted(probes)} (where"
                                       f" {VM_ID} is, and the other host) in {timeout:g}s")
                sent = {}
                for host, guest in probes.items():
                    probe = f"lab-probe-{os.getpid()}-{time.monotonic_ns()}-{n}-{host}"
                    sent[probe] = host
                    client.publish(topics.CONTROL_MIGRATE, pb.MigrationRequest(
                        migration_id=probe, guest_id=guest, to_host=host,
                        requested_by="qemulab readiness probe"))
                answer_by = time.monotonic() + 0.3
                while sent and (left := answer_by - time.monotonic()) > 0:
                    for msg in await client.recv_batch(timeout=left):
                        s = msg.payload
                        if isinstance(s, pb.MigrationStatus) and s.migration_id in sent:
                            host = sent.pop(s.migration_id)
                            known = ("unknown" not in s.error if probes[host] == VM_ID
                                     else "unknown host" not in s.error)
                            if known:
                                del probes[host]
                if not probes:
                    return
                await asyncio.sleep(0.2)

    def migrate(self, to_host: str, timeout: float = 60.0,
                on_status: Callable[[dict[str, Any]], None] | None = None,
                ) -> list[dict[str, Any]]:
        """`vnet migrate vm1 HOST --json`: the statuses it printed, the outcome last."""
        proc = subprocess.Popen(
            [*VNET, "migrate", VM_ID, to_host, "--json", "--timeout", str(timeout),
             "--host", "lab", *self.bus_args()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT),
            start_new_session=True)
        statuses: list[dict[str, Any]] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                status = json.loads(line)
                statuses.append(status)
                if on_status is not None:
                    on_status(status)
            proc.wait(timeout)
        finally:
            stop_process(proc, 5)
        return statuses

    def ping(self, count: int = 3, timeout_s: float = 2.0) -> bool:
        done = self.tb.run(self.tb.guest("g1").netns,
                           ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", f"{timeout_s:g}",
                            VM_IP], check=False)
        return done.returncode == 0

    def wait_ping(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ping(count=1, timeout_s=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"g1 cannot ping {VM_ID} ({VM_IP}) after {timeout:g}s")

    def ping_flood(self, name: str) -> PingFlood:
        return PingFlood(self.tb, "g1", VM_IP, self.logs / f"ping-{name}.log")

    def vm(self) -> vmdir.VmDir:
        return vmdir.VmDir(self.qemu_dir / VM_ID)

    def running_instances(self) -> list[vmdir.Instance]:
        return [i for i in self.vm().instances() if i.pid() is not None]


@contextmanager
def qemu_lab(logs: Path, memory_mb: int = 128, boot_timeout: float = 120.0,
             forwarder_port: int = 7200) -> Iterator[QemuLab]:
    """The lab up and vm1 answering g1's pings; all of it stopped on exit."""
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        tb = stack.enter_context(Testbed(TestbedSpec.from_dict(SPEC, name="qemumig")))
        qemu_dir = tb.run_dir / "qemu"
        qemu_dir.mkdir()
        stack.callback(vmdir.stop_all, qemu_dir)  # after the forwarders and the migrator
        launcher = stack.enter_context(Launcher())
        with open(logs / "broker.log", "ab") as err:
            broker = launcher.start_broker_ipc(tb.run_dir, stderr=err.fileno())
        bus = BusSettings(pub=str(broker.info["pub"]), sub=str(broker.info["sub"]))
        lab = QemuLab(tb, bus, launcher, logs, qemu_dir)

        def stop_forwarders() -> None:
            for host in list(lab.forwarders):
                stop_process(lab.forwarders.pop(host), 10)

        stack.callback(stop_forwarders)
        _, inst = vmdir.start_vm(qemu_dir, vmdir.VmConfig(
            id=VM_ID, mac=VM_MAC, ip_cidr=f"{VM_IP}/16", memory_mb=memory_mb))
        for host in ("proxy", "h1", "h2"):
            extra = ["--guest", f"id={VM_ID},mac={VM_MAC},ip={VM_IP},qemu={inst.attachment}"] \
                if host == "h1" else []
            lab.forwarders[host] = start_forwarder(tb, host, bus, log=logs / f"{host}.log",
                                                   port=forwarder_port, extra=extra)
        vmdir.wait_booted(inst, boot_timeout)
        lab.wait_ping()
        yield lab


def run_state(inst: vmdir.Instance) -> str:
    """QEMU's run state of an instance ("running", "inmigrate", ...), or "gone"."""

    async def query() -> str:
        conn = await connect_quietly(str(inst.qmp))
        if conn is None:
            return "gone"
        try:
            return str((await conn.execute("query-status")).get("status", "?"))
        finally:
            await conn.close()

    return asyncio.run(query())


def wait_run_state(inst: vmdir.Instance, state: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (now := run_state(inst)) != state:
        if time.monotonic() > deadline:
            raise TimeoutError(f"QEMU instance {inst.dir} is {now!r}, not {state!r},"
                               f" after {timeout:g}s")
        time.sleep(0.1)


def kill_instance(inst: vmdir.Instance) -> bool:
    """SIGKILL one QEMU instance (a destination dying mid-move); False if not running."""
    pid = inst.pid()
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True
