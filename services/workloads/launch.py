"""Start a Patterns run in the guests of a testbed and collect its end.

Takes the testbed duck-typed (guest(name) with .ip and .netns, popen(netns,
argv)), as services/forwarder/launch.py does, so the workload package needs
no testbed import. run_and_collect does a whole bounded run; the demo, which
reads throughput while a run goes on, uses PatternsRun and ReportCollector.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from services.bus.launch import stop_process
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings
from services.workloads.collect import ReportCollector
from services.workloads.patterns import DEFAULT_PORT, PatternsParams

ROOT = Path(__file__).resolve().parents[2]
VNET = [sys.executable, "-m", "services.cli.main"]


class GuestsHost(Protocol):
    """What the launcher needs of a testbed."""

    def guest(self, guest: str) -> Any: ...

    def popen(self, netns: str, argv: list[str], **kw: Any) -> subprocess.Popen[Any]: ...


@dataclass(frozen=True)
class Workload:
    """The settings every worker of a run shares (see PatternsParams for each)."""

    topology: str = "ring"
    msg_bytes: int = 65536
    compute_s: float = 0.0
    compute_ops: int = 0
    ops_per_byte: float = 0.0
    duration_s: float = 0.0
    iterations: int = 0
    port: int = DEFAULT_PORT
    report_interval_s: float = 1.0
    connect_timeout_s: float = 30.0
    drain_timeout_s: float = 5.0

    def params(self, rank: int, peers: tuple[str, ...], guest: str = "") -> PatternsParams:
        shared = {f.name: getattr(self, f.name) for f in fields(self)}
        return PatternsParams(peers=peers, rank=rank, guest=guest, **shared)


# PatternsParams field -> `vnet patterns worker` option.
_OPTIONS = {
    "topology": "--topology", "rank": "--rank", "guest": "--guest", "port": "--port",
    "msg_bytes": "--msg-bytes", "compute_s": "--compute-s", "compute_ops": "--compute-ops",
    "ops_per_byte": "--ops-per-byte", "duration_s": "--duration", "iterations": "--iterations",
    "report_interval_s": "--report-interval-s", "connect_timeout_s": "--connect-timeout-s",
    "drain_timeout_s": "--drain-timeout-s",
}


def worker_args(params: PatternsParams, bus: BusSettings | None) -> list[str]:
    """`patterns worker ...` arguments (after `vnet`) that run exactly params."""
    args = ["patterns", "worker", "--peers", ",".join(params.peers)]
    for name, option in _OPTIONS.items():
        args += [option, str(getattr(params, name))]
    if bus is None:
        args.append("--no-bus")
    else:
        args += ["--bus-pub", bus.pub, "--bus-sub", bus.sub]
    return args


class PatternsRun:
    """One worker per guest (rank i in guests[i]); stops any still running on exit."""

    def __init__(self, tb: GuestsHost, guests: list[str], workload: Workload,
                 bus: BusSettings | None, logs: Path | None = None) -> None:
        self.tb = tb
        self.guests = list(guests)
        self.workload = workload
        self.bus = bus
        self.logs = logs
        peers = tuple(str(tb.guest(g).ip) for g in self.guests)
        self.params = [workload.params(rank, peers, g) for rank, g in enumerate(self.guests)]
        for p in self.params:
            p.check()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.summaries: dict[str, dict[str, Any]] = {}

    def start(self) -> None:
        for guest, params in zip(self.guests, self.params, strict=True):
            argv = VNET + worker_args(params, self.bus)
            netns = str(self.tb.guest(guest).netns)
            if self.logs is None:
                self.procs[guest] = self.tb.popen(
                    netns, argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                    cwd=str(ROOT))
                continue
            with open(self.logs / f"patterns-{guest}.log", "ab") as err:
                self.procs[guest] = self.tb.popen(
                    netns, argv, stdout=subprocess.PIPE, stderr=err, cwd=str(ROOT))

    def wait(self, timeout: float) -> dict[str, dict[str, Any]]:
        """Each worker's summary once all have exited; TimeoutError if some did not."""
        deadline = time.monotonic() + timeout
        for guest, proc in self.procs.items():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                running = [g for g, p in self.procs.items() if p.poll() is None]
                raise TimeoutError(f"patterns workers in {', '.join(running)} still running"
                                   f" after {timeout:g}s") from None
            assert proc.stdout is not None
            line = proc.stdout.read().decode(errors="replace").strip().splitlines()
            summary: dict[str, Any] = json.loads(line[-1]) if line else {}
            summary["exit_code"] = proc.returncode
            self.summaries[guest] = summary
        return self.summaries

    def stop(self) -> None:
        """Ask every worker still running to finish (SIGTERM), then make sure."""
        for proc in self.procs.values():
            stop_process(proc, timeout=10.0)

    def __enter__(self) -> PatternsRun:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


async def run_and_collect(
    tb: GuestsHost, guests: list[str], workload: Workload, bus: BusSettings,
    logs: Path | None = None, timeout: float = 60.0,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[pb.AppReport]]]:
    """Run one bounded Patterns run to its end: each worker's summary and its bus reports.

    Call it from a running event loop, after the testbed is built (pyroute2
    builds it with an event loop of its own).
    """
    if not (workload.duration_s or workload.iterations):
        raise ValueError("a run to collect needs a duration or an iteration count")
    async with ReportCollector(bus) as reports:
        with PatternsRun(tb, guests, workload, bus, logs) as run:
            await reports.until(lambda c: c.finished(guests), timeout,
                                "last report from every worker")
            summaries = run.wait(timeout)
    return summaries, reports.reports
