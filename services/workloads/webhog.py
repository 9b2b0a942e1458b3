"""A loaded host for one tier: busy processes sharing a CPU limit with that tier's server.

On the namespace testbed every "host" shares the machine's cores, so a busy
process alone slows everything alike (forwarders included). A host-specific
load needs a limit: the tier's server processes and the hogs go into one CPU
cgroup with a quota (cpu_limit CPUs), standing for a host of that capacity
that something else is also using. `release()` takes the server out again, as
moving its guest to an unloaded host would. cgroup v1 (the cpu controller) and
v2 (with cpu enabled in the root's subtree_control) are both understood;
without a limit the hogs just run (competing load on the whole machine).
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any

from services.bus.launch import stop_process

V1_CPU = Path("/sys/fs/cgroup/cpu")
V2_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000
HOG = [sys.executable, "-c", "while True: pass"]


class LoadError(RuntimeError):
    """The CPU limit cannot be set on this machine."""


def cgroup_root() -> tuple[Path, int]:
    """Where CPU cgroups are made on this machine, and the cgroup version."""
    if (V1_CPU / "cpu.cfs_quota_us").exists():
        return V1_CPU, 1
    controllers = V2_ROOT / "cgroup.subtree_control"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return V2_ROOT, 2
    raise LoadError("no CPU cgroup controller (neither cgroup v1's cpu nor v2's with cpu in "
                    f"{controllers}): run without cpu_limit")


def server_pids(root: int) -> list[int]:
    """A server's processes: root, its process group (nginx's workers) and its
    descendants (PostgreSQL's backends start sessions of their own)."""
    parent: dict[int, int] = {}
    group: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ')'.
        fields = stat.rsplit(")", 1)[1].split()
        parent[int(entry.name)], group[int(entry.name)] = int(fields[1]), int(fields[2])
    found = {root} if root in parent else set()
    found |= {pid for pid, pgrp in group.items() if pgrp == root}
    grew = True
    while grew:
        more = {pid for pid, ppid in parent.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return sorted(found)


def _current_cgroup(pid: int, version: int) -> str:
    """The pid's cgroup path in the hierarchy we use ('' if it cannot be read)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if (version == 1 and "cpu" in controllers.split(",")) or \
                (version == 2 and controllers == ""):
            return path
    return ""


class CpuLoad:
    """`hogs` busy processes in netns, sharing cpu_limit CPUs with the server's processes.

    Use as a context manager or call start()/close(); close() stops the hogs, puts
    every moved process back in its own cgroup and removes the cgroup.
    """

    def __init__(self, tb: Any, netns: str, name: str, servers: list[int],
                 hogs: int = 1, cpu_limit: float | None = 0.5) -> None:
        if hogs < 0:
            raise ValueError(f"hogs must be >= 0 (got {hogs})")
        if cpu_limit is not None and cpu_limit <= 0:
            raise ValueError(f"cpu_limit must be > 0 CPUs, or None for no limit "
                             f"(got {cpu_limit})")
        self.tb = tb
        self.netns = netns
        self.name = name
        self.servers = list(servers)
        self.hogs = hogs
        self.cpu_limit = cpu_limit
        self.procs: list[subprocess.Popen[bytes]] = []
        self.cgroup: Path | None = None
        self._version = 0
        self._moved: dict[int, str] = {}  # pid -> the cgroup it came from

    def start(self) -> None:
        if self.cpu_limit is not None:
            root, self._version = cgroup_root()
            self.cgroup = root / self.name
            self.cgroup.mkdir(exist_ok=True)
            quota = max(1000, int(self.cpu_limit * PERIOD_US))
            if self._version == 1:
                (self.cgroup / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (self.cgroup / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                (self.cgroup / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        for _ in range(self.hogs):
            self.procs.append(self.tb.popen(self.netns, HOG, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
        if self.cgroup is not None:
            for leader in self.servers + [p.pid for p in self.procs]:
                for pid in server_pids(leader):
                    self._move_in(pid)

    def _move_in(self, pid: int) -> None:
        assert self.cgroup is not None
        origin = _current_cgroup(pid, self._version)
        with suppress(ProcessLookupError):
            (self.cgroup / "cgroup.procs").write_text(str(pid))
            self._moved[pid] = origin

    def release(self) -> None:
        """Lift the load: stop the hogs and move the server's processes back out."""
        for proc in self.procs:
            stop_process(proc, 5.0)
        self.procs.clear()
        if self.cgroup is None:
            return
        root = self.cgroup.parent
        for pid, origin in self._moved.items():
            target = root / origin.lstrip("/") if origin else root
            if not (target / "cgroup.procs").exists():
                target = root
            with suppress(ProcessLookupError, OSError):
                (target / "cgroup.procs").write_text(str(pid))
        self._moved.clear()

    def close(self) -> None:
        self.release()
        if self.cgroup is not None:
            with suppress(FileNotFoundError):
                self.cgroup.rmdir()
            self.cgroup = None

    def throttled_s(self) -> float:
        """CPU time the limit withheld so far (0 without a limit)."""
        if self.cgroup is None:
            return 0.0
        stat = dict(line.split() for line in (self.cgroup / "cpu.stat").read_text()
                    .splitlines() if len(line.split()) == 2)
        if self._version == 1:
            return int(stat.get("throttled_time", "0")) / 1e9
        return int(stat.get("throttled_usec", "0")) / 1e6

    def __enter__(self) -> CpuLoad:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

