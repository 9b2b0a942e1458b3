"""Start `vnet migrator` for a testbed: the argv and a ready-line wait.

Shared by tests, the demo and the benchmark. Takes the testbed duck-typed
(hosts(), host_netns(), underlay_ip(), run_dir) to keep the migrator free of
a testbed import.
"""

from __future__ import annotations

import select
import subprocess
import sys
from pathlib import Path
from typing import Any

from services.bus.settings import BusSettings

ROOT = Path(__file__).resolve().parents[2]


def migrator_argv(tb: Any, bus: BusSettings, *, backend: str = "netns", journal: Path,
                  extra: list[str] | None = None) -> list[str]:
    argv = [sys.executable, "-m", "services.cli.main", "migrator", "--host", "migrator",
            "--backend", backend, "--journal", str(journal),
            "--bus-pub", bus.pub, "--bus-sub", bus.sub]
    if backend == "netns":
        for host in tb.hosts():
            argv += ["--netns-host", f"{host}={tb.host_netns(host)}@{tb.underlay_ip(host)}"]
    return argv + (extra or [])


def start_migrator(tb: Any, bus: BusSettings, *, log: Path, journal: Path,
                   backend: str = "netns", extra: list[str] | None = None,
                   timeout: float = 30.0) -> subprocess.Popen[bytes]:
    """Start it (in the root namespace: it reaches hosts with `ip -n`), wait until ready."""
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            migrator_argv(tb, bus, backend=backend, journal=journal, extra=extra),
            stdout=subprocess.PIPE, stderr=err, cwd=str(ROOT), start_new_session=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if b'"ready": true' not in line:
        proc.kill()
        proc.wait()
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"migrator not ready in {timeout}s (exit {proc.poll()}): {tail}")
    return proc
