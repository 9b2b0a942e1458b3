"""Real workers as processes on loopback (no root): a broker, TCP between the workers,
reports on the bus, and the ways a run ends (its duration, SIGTERM, a missing peer)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator

import pytest

from services.bus.launch import Launcher, Process
from services.bus.settings import BusSettings
from services.workloads.collect import ReportCollector
from services.workloads.launch import Workload, worker_args


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def launcher() -> Iterator[Launcher]:
    with Launcher() as launch:
        yield launch


@pytest.fixture
def bus(launcher: Launcher) -> BusSettings:
    proc = launcher.start_broker()
    return BusSettings(pub=str(proc.info["pub"]), sub=str(proc.info["sub"]))


def start(launcher: Launcher, work: Workload, n: int, bus: BusSettings | None,
          ranks: range | None = None) -> dict[str, Process]:
    peers = tuple(f"127.0.0.1:{p}" for p in free_ports(n))
    out: dict[str, Process] = {}
    for rank in ranks if ranks is not None else range(n):
        guest = f"w{rank}"
        out[guest] = launcher.start(guest, worker_args(work.params(rank, peers, guest), bus),
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return out


def summary(proc: Process, timeout: float) -> dict[str, object]:
    """The worker's last line, after it exited by itself within timeout."""
    out, _ = proc.popen.communicate(timeout=timeout)
    lines = out.splitlines()
    assert lines, f"{proc.name} printed nothing (exit {proc.popen.returncode})"
    got: dict[str, object] = json.loads(lines[-1])
    got["exit_code"] = proc.popen.returncode
    return got


async def test_a_ring_reports_on_the_bus_and_ends_together(
        launcher: Launcher, bus: BusSettings) -> None:
    work = Workload(topology="ring", msg_bytes=20000, compute_s=0.002, duration_s=1.5,
                    report_interval_s=0.3)
    async with ReportCollector(bus) as reports:
        procs = start(launcher, work, 4, bus)
        await reports.until(lambda c: c.finished(procs), 20.0, "last report from every worker")
    ends = {g: summary(p, 10.0) for g, p in procs.items()}
    assert {e["exit_code"] for e in ends.values()} == {0}, ends
    iterations = [int(str(e["iterations"])) for e in ends.values()]
    assert min(iterations) > 0 and max(iterations) - min(iterations) <= 1, ends
    assert sorted(str(e["ended"]) for e in ends.values()).count("duration") >= 1
    for guest, got in reports.reports.items():
        last = got[-1]
        assert last.done and not last.error
        assert (last.app, last.topology, last.workers) == ("patterns", "ring", 4)
        assert last.iterations == ends[guest]["iterations"]
        assert last.bytes_sent >= last.iterations * 2 * 20000
        assert any(r.iterations_per_s > 0 for r in got[:-1]), got


async def test_sigterm_to_one_worker_ends_the_whole_run_cleanly(
        launcher: Launcher, bus: BusSettings) -> None:
    work = Workload(topology="reduction", msg_bytes=5000, compute_s=0.001,
                    report_interval_s=0.2)
    async with ReportCollector(bus) as reports:
        procs = start(launcher, work, 5, bus)
        await reports.until(lambda c: len(c.latest()) == 5 and all(
            r.iterations > 0 for r in c.latest().values()), 20.0, "every worker running")
    os.killpg(procs["w3"].popen.pid, signal.SIGTERM)
    ends = {g: summary(p, 15.0) for g, p in procs.items()}
    assert {e["exit_code"] for e in ends.values()} == {0}, ends
    assert ends["w3"]["ended"] == "stopped"
    assert {e["ended"] for g, e in ends.items() if g != "w3"} == {"peer finished"}
    iterations = [int(str(e["iterations"])) for e in ends.values()]
    assert min(iterations) > 0 and max(iterations) - min(iterations) <= 1, ends


def test_a_missing_peer_fails_the_worker_with_its_address(launcher: Launcher) -> None:
    work = Workload(topology="bus/line", connect_timeout_s=1.0, duration_s=1.0)
    procs = start(launcher, work, 3, None, ranks=range(2))  # rank 2 never starts
    ends = {g: summary(p, 15.0) for g, p in procs.items()}
    assert ends["w1"]["exit_code"] == 1
    assert "no connection to rank 2 at 127.0.0.1:" in str(ends["w1"]["error"])
    # w0 got its one neighbour, ran, and finished when w1 gave up and left.
    assert ends["w0"]["exit_code"] == 0 and ends["w0"]["ended"] == "peer finished"
