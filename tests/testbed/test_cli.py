"""`vnet testbed up/ls/down` as separate processes: signals, crashes and cleanup."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from services.testbed import rundir

from .conftest import SPECS, leftovers, needs_netns

pytestmark = [pytest.mark.netns, needs_netns]
VNET = [sys.executable, "-m", "services.cli.main"]


def vnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VNET, *args], capture_output=True, text=True, timeout=60)


class Up:
    """`vnet testbed up --json SPEC` in the background, killed at the end whatever happens."""

    def __init__(self, spec: str) -> None:
        self.proc = subprocess.Popen([*VNET, "testbed", "up", "--json", spec],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.close()
            pytest.fail(f"testbed up did not become ready: {self.proc.stderr!r}")
        self.info = json.loads(line)
        self.prefix: str = self.info["prefix"]
        state = rundir.RunState.load(rundir.run_root() / self.prefix)
        self.pids = [pid for pid, _ in state.processes]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        if getattr(self, "prefix", None):
            rundir.down(self.prefix)


def test_up_ls_and_sigterm() -> None:
    up = Up(str(SPECS / "wan.toml"))
    try:
        assert up.info["ready"] and len(up.info["guests"]) == 3
        assert up.info["guests"][0]["mac"] == "02:76:6e:00:00:01"
        assert up.pids, "the delay relay is recorded"
        listed = [json.loads(line) for line in vnet("testbed", "ls", "--json").stdout.splitlines()]
        mine = [r for r in listed if r["prefix"] == up.prefix]
        assert mine and mine[0]["owner_alive"] and len(mine[0]["namespaces"]) == 12
        up.proc.send_signal(signal.SIGTERM)
        assert up.proc.wait(timeout=30) == 0
        assert leftovers(up.prefix, up.pids) == []
    finally:
        up.close()


def test_down_cleans_up_after_a_crash() -> None:
    up = Up(str(SPECS / "two-clusters.toml"))
    try:
        os.kill(up.proc.pid, signal.SIGKILL)  # no teardown: namespaces and relay stay
        up.proc.wait(timeout=10)
        assert leftovers(up.prefix, up.pids) != []
        ls = vnet("testbed", "ls").stdout
        assert f"{up.prefix}  leftover" in ls
        r = vnet("testbed", "down", up.prefix)
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 10
        while leftovers(up.prefix, up.pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert leftovers(up.prefix, up.pids) == []
        assert up.prefix not in [r.prefix for r in rundir.list_runs()]
    finally:
        up.close()


def test_cli_rejects_bad_input(tmp_path: object) -> None:
    r = vnet("testbed", "down", "eth0")
    assert r.returncode == 2 and "'eth0' is not a testbed run prefix" in r.stderr
    bad = SPECS.parent / "does-not-exist.toml"
    r = vnet("testbed", "up", str(bad))
    assert r.returncode == 2 and "does-not-exist.toml" in r.stderr


def test_down_never_signals_a_live_api_owner() -> None:
    from services.testbed.spec import load_spec
    from services.testbed.testbed import Testbed

    with Testbed(load_spec(SPECS / "cluster.toml")) as tb:
        r = vnet("testbed", "down", tb.prefix)
        assert r.returncode == 2
        assert f"belongs to live process {os.getpid()}" in r.stderr and "--force" in r.stderr
        assert len(leftovers(tb.prefix)) == len(tb.plan.namespaces) + 1  # + run dir
