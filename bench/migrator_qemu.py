"""QEMU live migration benchmark: a 128 MB TCG guest moved back and forth between
two hosts' forwarders while a guest on the proxy host pings it every 5 ms.

Per move: QEMU's own figures (downtime, total time, bytes sent), vnet's total
(request to release, including starting the destination QEMU) and the
guest-visible gap: the longest run of unanswered pings × 5 ms, the issue's
measure. Beside it, the longest time between two replies, which also counts
late (not lost) replies — under TCG the destination starts with a cold
translation cache and answers the first pings after the switch late — and the
same figure over a window with no migration, for scale.

`run_qemu_bench` is what bench/migrator.py calls; `main` runs it alone.
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import BenchOutput, Goal
from services.migrator import qemulab
from services.testbed import qemu as testbed_qemu

MOVES = 6
GAP_GOAL_MS = 100.0  # guest-visible gap, vnet's switch included
DOWNTIME_GOAL_MS = 50.0  # QEMU's reported downtime
_QEMU_TOTAL = re.compile(r"qemu: total (\d+) ms")
_LIVE_AFTER = re.compile(r"live (\d+) ms after QEMU reported completion")


def _replies(flood: qemulab.PingFlood) -> int:
    return flood.log.read_bytes().count(b" bytes from ")


def _wait_replies(flood: qemulab.PingFlood, more: int, timeout: float = 15.0) -> None:
    target = _replies(flood) + more
    deadline = time.monotonic() + timeout
    while _replies(flood) < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{flood.log}: fewer than {more} replies in {timeout:g}s")
        time.sleep(0.05)


def _number(pattern: re.Pattern[str], text: str) -> float | None:
    m = pattern.search(text)
    return float(m.group(1)) if m else None


def _move(lab: qemulab.QemuLab, n: int) -> dict[str, Any]:
    to = lab.other_host()
    flood = lab.ping_flood(f"bench-{n}")
    try:
        _wait_replies(flood, 20)
        statuses = lab.migrate(to)
        done = statuses[-1] if statuses else {}
        if done.get("phase") != "MIGRATION_PHASE_DONE":
            raise RuntimeError(f"move {n} to {to} did not complete: {done}")
        lab.location = to
        _wait_replies(flood, 40)
    finally:
        ping = flood.stop()
    detail = str(done.get("detail", ""))
    return {
        "to": to,
        "qemu_downtime_ms": done.get("downtimeS", 0.0) * 1000,
        "qemu_total_ms": _number(_QEMU_TOTAL, detail),
        "vnet_total_s": done.get("totalS", 0.0),
        "bytes": int(done.get("bytesMoved", 0)),
        "live_after_completion_ms": _number(_LIVE_AFTER, detail),
        "ping": ping.as_dict(),
        "detail": detail,
    }


def _baseline(lab: qemulab.QemuLab, seconds: float = 3.0) -> dict[str, float | int]:
    flood = lab.ping_flood("bench-baseline")
    try:
        _wait_replies(flood, 20)
        time.sleep(seconds)
    finally:
        stats = flood.stop()
    return stats.as_dict()


def run_qemu_bench(progress: Callable[[str], None], moves: int = MOVES,
                   logs: Path | None = None) -> tuple[dict[str, Any], list[Goal]]:
    """Raw figures and goals of `moves` live migrations of vm1 (h1 <-> h2)."""
    reason = qemulab.unavailable()
    if reason is not None:
        progress(f"qemu migration skipped: {reason}")
        return {"skipped": reason}, []
    with tempfile.TemporaryDirectory(prefix="vnet-bench-qemu-") as tmp:
        logs = logs or Path(tmp)
        progress("booting the lab (testbed, forwarders, 128 MB TCG VM)")
        with qemulab.qemu_lab(logs) as lab:
            lab.start_migrator()
            baseline = _baseline(lab)
            runs = []
            for n in range(moves):
                run = _move(lab, n)
                progress(f"move {n + 1}/{moves} to {run['to']}: QEMU downtime"
                         f" {run['qemu_downtime_ms']:.0f} ms, gap {run['ping']['gap_ms']} ms,"
                         f" reply gap {run['ping']['longest_reply_gap_ms']} ms,"
                         f" total {run['vnet_total_s']:.2f} s")
                runs.append(run)
    gaps = [float(r["ping"]["gap_ms"]) for r in runs]
    reply_gaps = [float(r["ping"]["longest_reply_gap_ms"]) for r in runs]
    downtimes = [float(r["qemu_downtime_ms"]) for r in runs]
    totals = [float(r["vnet_total_s"]) for r in runs]
    qemu_totals = [float(r["qemu_total_ms"]) for r in runs if r["qemu_total_ms"] is not None]
    results: dict[str, Any] = {
        "guest_memory_mb": 128,
        "accelerator": testbed_qemu.accelerator(),
        "ping_interval_ms": qemulab.PING_INTERVAL_S * 1000,
        "moves": runs,
        "baseline_no_migration": baseline,
        "gap_ms": {"median": statistics.median(gaps), "max": max(gaps)},
        "longest_reply_gap_ms": {"median": statistics.median(reply_gaps),
                                 "max": max(reply_gaps)},
        "qemu_downtime_ms": {"median": statistics.median(downtimes), "max": max(downtimes)},
        "qemu_total_ms": {"median": statistics.median(qemu_totals), "max": max(qemu_totals)}
        if qemu_totals else {},
        "vnet_total_s": {"median": statistics.median(totals), "max": max(totals)},
        "bytes": {"median": statistics.median(r["bytes"] for r in runs)},
    }
    goals = [
        Goal.below(f"qemu live migration: guest-visible gap (ping every 5 ms), worst of"
                   f" {len(runs)}", GAP_GOAL_MS, max(gaps), "ms"),
        Goal.below(f"qemu live migration: QEMU-reported downtime, worst of {len(runs)}",
                   DOWNTIME_GOAL_MS, max(downtimes), "ms"),
    ]
    return results, goals


def main(progress: Callable[[str], None]) -> BenchOutput:
    results, goals = run_qemu_bench(progress)
    return BenchOutput(results=results, goals=goals)
