"""A loaded host: its processes share a small CPU quota with a competing busy loop.

Hosts are namespaces on one machine, so "a host's CPU" is emulated with a
cgroup-v1 CPU quota: the host's forwarder, a busy-loop process started in the
host's namespace and the Patterns workers of the guests the host holds right
now all run in one cgroup. A guest's worker follows its guest: the runner
calls place() with the hosts the forwarders report, and a worker whose guest
left the loaded host goes back to the root cgroup (and the reverse).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from services.workloads.webhog import server_pids

CPU_ROOT = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 100_000


class HostsTestbed(Protocol):
    def host_netns(self, host: str) -> str: ...

    def popen(self, netns: str, argv: list[str], **kw: Any) -> subprocess.Popen[Any]: ...


class CpuLoad:
    """Use as a context manager; removes its cgroup and busy loop on exit, even on errors."""

    def __init__(self, tb: HostsTestbed, host: str, quota: float, name: str) -> None:
        self.tb = tb
        self.host = host
        self.quota = quota  # CPUs the loaded host gets in all (0.3 = 30% of one core)
        self.dir = CPU_ROOT / name
        self.busy: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, int] = {}   # guest -> worker pid
        self.inside: set[str] = set()       # guests whose worker is in the cgroup

    @staticmethod
    def available() -> str:
        """Empty when a CPU quota can be set here, else why not."""
        if not (CPU_ROOT / "cpu.cfs_quota_us").exists():
            return f"no cgroup-v1 cpu controller at {CPU_ROOT}"
        if os.geteuid() != 0:
            return "setting a CPU quota needs root"
        return ""

    def __enter__(self) -> CpuLoad:
        self.dir.mkdir()
        try:
            (self.dir / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.dir / "cpu.cfs_quota_us").write_text(str(int(self.quota * PERIOD_US)))
            self.busy = self.tb.popen(self.tb.host_netns(self.host),
                                      [sys.executable, "-c", "while True: pass"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.add(self.busy.pid)
        except BaseException:
            self._remove()
            raise
        return self

    def add(self, pid: int) -> None:
        """Put a process, its group and descendants (a server's workers), all their
        threads, under the host's quota."""
        for p in server_pids(pid) or [pid]:
            with contextlib.suppress(ProcessLookupError):
                (self.dir / "cgroup.procs").write_text(str(p))

    @staticmethod
    def release(pid: int) -> None:
        for p in server_pids(pid) or [pid]:
            with contextlib.suppress(ProcessLookupError, OSError):
                (CPU_ROOT / "cgroup.procs").write_text(str(p))

    def place(self, where: dict[str, str]) -> None:
        """Workers of guests on the loaded host in, the others out (guest -> host)."""
        for guest, pid in self.workers.items():
            host = where.get(guest)
            if host is None:
                continue
            if host == self.host and guest not in self.inside:
                with contextlib.suppress(ProcessLookupError, OSError):
                    self.add(pid)
                    self.inside.add(guest)
            elif host != self.host and guest in self.inside:
                self.release(pid)
                self.inside.discard(guest)

    def _remove(self) -> None:
        if self.busy is not None and self.busy.poll() is None:
            self.busy.kill()
            self.busy.wait()
        procs = self.dir / "cgroup.procs"
        if procs.exists():
            for line in procs.read_text().split():
                self.release(int(line))
        with contextlib.suppress(OSError):
            self.dir.rmdir()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._remove()
