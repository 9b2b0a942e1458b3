"""`vnet demo` and `vnet up` / `vnet down`, run as an operator runs them."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from services.bus.launch import VNET, stop_process
from services.testbed import rundir

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "services/testbed/specs/cluster.toml"


@pytest.mark.timeout(300)
def test_the_demo_adapts_by_itself_and_ends_with_the_figures() -> None:
    out = subprocess.run(
        [*VNET, "demo", "--warmup-s", "2", "--before-s", "8", "--adapt-s", "40",
         "--settle-s", "3", "--after-s", "8"],
        capture_output=True, text=True, timeout=280, cwd=str(ROOT))
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "inference: topology change" in out.stdout and "ring over 6 guests" in out.stdout
    assert re.search(r"planner \(\w+\): plan \d+: add links r\d-r\d", out.stdout), out.stdout
    assert "fast-path link" in out.stdout
    last = re.fullmatch(r"adaptation: before ([\d.]+) it/s, after ([\d.]+) it/s,"
                        r" speedup ([\d.]+)x", lines[-1])
    assert last is not None, lines[-1]
    assert float(last.group(1)) > 0 and float(last.group(2)) > 0
    assert not any(r.owner_alive for r in rundir.list_runs() if r.spec == "demo")


@pytest.mark.timeout(240)
def test_up_keeps_the_system_until_down_removes_it() -> None:
    up = subprocess.Popen([*VNET, "up", str(CLUSTER)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
                          start_new_session=True)
    try:
        assert up.stdout is not None
        fd = up.stdout.fileno()
        text = ""
        deadline = time.monotonic() + 150  # a busy machine builds namespaces slowly
        while "  stop:" not in text:
            ready, _, _ = select.select([fd], [], [], max(0.1, deadline - time.monotonic()))
            assert ready and time.monotonic() < deadline, f"vnet up said only {text!r}"
            chunk = os.read(fd, 65536).decode()
            assert chunk, f"vnet up ended: {text!r} {up.stderr.read() if up.stderr else ''}"
            text += chunk
        seen = text.splitlines()
        stop_line = next(line for line in seen if line.startswith("  stop:"))
        prefix = stop_line.split("vnet down ")[1].strip("`")
        tail = next(line for line in seen if line.startswith("  tail:")).split()[-1]
        hb = subprocess.run([*VNET, "tail", "--bus-sub", tail, "--json", "--duration", "3",
                             "heartbeat.migrator"], capture_output=True, text=True, timeout=30)
        assert '"heartbeat.migrator' in hb.stdout, hb.stdout + hb.stderr
        down = subprocess.run([*VNET, "down", prefix], capture_output=True, text=True,
                              timeout=60)
        assert down.returncode == 0, down.stdout + down.stderr
        assert up.wait(30) == 0
        assert not [n for n in rundir.list_netns() if n.startswith(prefix + "-")]
    finally:
        stop_process(up, 10)  # type: ignore[arg-type]
