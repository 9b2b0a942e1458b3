"""Migrator benchmark: how long a guest is gone, and how long a move takes.

On the two-clusters testbed (c1: proxy, h1, h2; c2: h3, h4; 100 Mbit/s, 1 ms
between them) with a forwarder per host, a broker and `vnet migrator`
(netns backend):

- downtime: g2 moves back and forth between h2 and h1 while g1 pings it every
  2 ms (ping -i 0.002 in g1's namespace); the guest-visible gap is the longest
  run of missing replies times the interval (plus one interval). The
  migrator's own figure (from the interface move until the destination
  forwarder reports the guest live) is recorded beside it.
- total time: the same moves with no memory charge, and with a 128 MiB memory
  copy charged within a cluster and across the 100 Mbit/s link (the move then
  takes as long as a VM's memory would take to cross it).

The QEMU live-migration figures come from bench/migrator_qemu.py when it is
present (its own results are merged into this file).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from tempfile import TemporaryDirectory

from matplotlib.figure import Figure

from bench.report import RESULTS_DIR, BenchOutput, Goal
from services.bus import topics
from services.bus.client import BusClient
from services.bus.launch import Launcher
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings
from services.forwarder.launch import start_forwarder
from services.migrator.launch import start_migrator
from services.testbed.spec import load_spec
from services.testbed.testbed import Testbed

Progress = Callable[[str], None]
SPEC = Path(__file__).resolve().parents[1] / "services/testbed/specs/two-clusters.toml"


@dataclass(frozen=True)
class MigratorBenchSettings:
    moves: int = 8  # back-and-forth moves for the downtime figure
    ping_interval_s: float = 0.002
    memory_mib: int = 128
    downtime_goal_ms: float = 50.0


@dataclass
class MoveResult:
    src: str
    dst: str
    memory_mib: int
    total_s: float
    downtime_s: float  # the migrator's figure
    bytes_moved: int
    gap_ms: float  # guest-visible, from the ping flood (0 when no flood ran)
    lost: int


class Rig:
    def __init__(self, tb: Testbed, bus: BusSettings, tmp: Path) -> None:
        self.tb = tb
        self.bus = bus
        self.tmp = tmp
        self.forwarders: dict[str, subprocess.Popen[bytes]] = {}
        self.migrator: subprocess.Popen[bytes] | None = None
        self.n = 0

    def start(self, memory_mib: int) -> None:
        self.stop_migrator()
        self.migrator = start_migrator(
            self.tb, self.bus, log=self.tmp / "migrator.log", journal=self.tmp / "journal",
            extra=["--memory-mb", str(memory_mib)] if memory_mib else [])

    def stop_migrator(self) -> None:
        if self.migrator is not None:
            os.killpg(self.migrator.pid, signal.SIGTERM)
            self.migrator.wait(10)
            self.migrator = None

    async def move(self, client: BusClient, guest: str, dst: str, memory_mib: int,
                   flood: bool) -> MoveResult:
        self.n += 1
        mid = f"bench-{self.n}"
        ping: subprocess.Popen[str] | None = None
        if flood:
            ip = self.tb.guest(guest).ip.split("/")[0]
            ping = self.tb.popen(self.tb.guest("g1").netns,
                                 ["ping", "-n", "-i", "0.002", "-W", "1", ip],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            await asyncio.sleep(0.5)
        client.publish(topics.CONTROL_MIGRATE, pb.MigrationRequest(
            migration_id=mid, guest_id=guest, to_host=dst, requested_by="bench"))
        outcome: pb.MigrationStatus | None = None
        deadline = time.monotonic() + 120
        while outcome is None and time.monotonic() < deadline:
            for msg in await client.recv_batch(timeout=1.0):
                s = msg.payload
                if (isinstance(s, pb.MigrationStatus) and s.migration_id == mid
                        and s.phase in (pb.MIGRATION_PHASE_DONE, pb.MIGRATION_PHASE_FAILED)):
                    outcome = s
        gap_ms, lost = 0.0, 0
        if ping is not None:
            await asyncio.sleep(0.5)
            ping.send_signal(signal.SIGINT)
            out, _ = ping.communicate(timeout=10)
            gap_ms, lost = _gap(out, 2.0)
        if outcome is None or outcome.phase != pb.MIGRATION_PHASE_DONE:
            raise RuntimeError(f"move {mid} of {guest} to {dst} failed:"
                               f" {outcome.error if outcome else 'no outcome'}")
        return MoveResult(outcome.from_host, dst, memory_mib, outcome.total_s,
                          outcome.downtime_s, outcome.bytes_moved, gap_ms, lost)


def _gap(ping_output: str, interval_ms: float) -> tuple[float, int]:
    """Longest run of missing replies (as time) and how many were lost."""
    seqs = sorted({int(m) for m in re.findall(r"icmp_seq=(\d+)", ping_output)})
    if not seqs:
        return float("inf"), 0
    longest = max((b - a - 1 for a, b in pairwise(seqs)), default=0)
    lost = seqs[-1] - seqs[0] + 1 - len(seqs)
    return (longest + 1) * interval_ms if longest else 0.0, lost


@contextmanager
def rig(progress: Progress) -> Iterator[Rig]:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(TemporaryDirectory(prefix="vnet-bench-mig-")))
        progress("building the two-clusters testbed")
        tb = stack.enter_context(Testbed(load_spec(SPEC)))
        launcher = stack.enter_context(Launcher())
        broker = launcher.start_broker_ipc(tb.run_dir)
        bus = BusSettings(pub=str(broker.info["pub"]), sub=str(broker.info["sub"]))
        r = Rig(tb, bus, tmp)

        def stop() -> None:
            r.stop_migrator()
            for proc in r.forwarders.values():
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)

        stack.callback(stop)
        for host in tb.hosts():
            r.forwarders[host] = start_forwarder(
                tb, host, bus, log=tmp / f"forwarder-{host}.log",
                extra=["--state-interval-s", "0.5", "--keepalive-s", "0.2"])
        yield r


async def _run(r: Rig, s: MigratorBenchSettings, progress: Progress
               ) -> dict[str, list[MoveResult]]:
    """The moves (the testbed is built outside the loop: pyroute2 needs that)."""
    out: dict[str, list[MoveResult]] = {"flood": [], "plain": [], "memory": []}
    if True:
        r.start(0)
        with BusClient(r.bus, "bench", "migrator") as client:
            client.subscribe(topics.MIGRATION + ".")
            await client.ready()
            await asyncio.sleep(1.5)  # the migrator learns where guests are (states at 2 Hz)
            here = "h2"
            for i in range(s.moves):
                dst = "h1" if here == "h2" else "h2"
                res = await r.move(client, "g2", dst, 0, flood=True)
                out["flood"].append(res)
                here = dst
                progress(f"move {i + 1}/{s.moves} {res.src}->{dst}: gap {res.gap_ms:.0f} ms,"
                         f" migrator downtime {res.downtime_s * 1000:.1f} ms,"
                         f" total {res.total_s * 1000:.0f} ms")
            for dst in ("h1", "h3", "h2"):
                res = await r.move(client, "g2", dst, 0, flood=False)
                out["plain"].append(res)
        r.start(s.memory_mib)
        with BusClient(r.bus, "bench", "migrator") as client:
            client.subscribe(topics.MIGRATION + ".")
            await client.ready()
            await asyncio.sleep(1.5)
            for dst in ("h1", "h3", "h2"):
                res = await r.move(client, "g2", dst, s.memory_mib, flood=False)
                out["memory"].append(res)
                progress(f"{s.memory_mib} MiB charge {res.src}->{dst}: total"
                         f" {res.total_s:.2f} s, downtime {res.downtime_s * 1000:.1f} ms")
    return out


def _plot(res: dict[str, list[MoveResult]], path: Path) -> None:
    fig = Figure(figsize=(9, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    flood = res["flood"]
    xs = list(range(1, len(flood) + 1))
    ax1.bar([x - 0.2 for x in xs], [m.gap_ms for m in flood], 0.4, label="ping gap (guest view)")
    ax1.bar([x + 0.2 for x in xs], [m.downtime_s * 1000 for m in flood], 0.4,
            label="migrator downtime")
    ax1.axhline(50, color="red", linestyle="--", linewidth=1, label="goal 50 ms")
    ax1.set_xlabel("move")
    ax1.set_ylabel("ms")
    ax1.set_title("netns move downtime")
    ax1.legend(fontsize=7)
    labels = [f"{m.src}->{m.dst}" for m in res["plain"]]
    ax2.bar([i - 0.2 for i in range(len(labels))], [m.total_s for m in res["plain"]], 0.4,
            label="no memory charge")
    ax2.bar([i + 0.2 for i in range(len(labels))], [m.total_s for m in res["memory"]], 0.4,
            label=f"{res['memory'][0].memory_mib} MiB charged")
    ax2.set_xticks(range(len(labels)), labels)
    ax2.set_ylabel("s")
    ax2.set_title("total move time (h3 is across 100 Mbit/s)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(progress: Progress, s: MigratorBenchSettings | None = None) -> BenchOutput:
    s = s or MigratorBenchSettings()
    with rig(progress) as r:
        res = asyncio.run(_run(r, s, progress))
    gaps = [m.gap_ms for m in res["flood"]]
    downs = [m.downtime_s * 1000 for m in res["flood"]]
    png = RESULTS_DIR / "migrator_netns.png"
    _plot(res, png)
    results: dict[str, object] = {
        "settings": asdict(s),
        "netns": {k: [asdict(m) for m in v] for k, v in res.items()},
        "netns_summary": {
            "gap_ms_median": statistics.median(gaps), "gap_ms_max": max(gaps),
            "migrator_downtime_ms_median": statistics.median(downs),
            "migrator_downtime_ms_max": max(downs),
            "total_s_plain": {f"{m.src}->{m.dst}": m.total_s for m in res["plain"]},
            "total_s_memory": {f"{m.src}->{m.dst}": m.total_s for m in res["memory"]},
            "plot": png.name,
        },
    }
    goals = [Goal.below("netns move: guest-visible gap (ping every 2 ms), worst of"
                        f" {len(gaps)}", s.downtime_goal_ms, max(gaps), "ms")]
    try:
        qemu = importlib.import_module("bench.migrator_qemu")
    except ImportError:
        results["qemu"] = "not measured: bench/migrator_qemu.py is absent"
    else:
        q_results, q_goals = qemu.run_qemu_bench(progress)
        results["qemu"] = q_results
        goals += q_goals
    return BenchOutput(results, goals)
