"""The CPU limit the forwarder runs under, read from its own cgroup.

A host whose CPU is mostly taken slows every guest on it, and a bulk-
synchronous application runs at its slowest member's pace. The forwarder
shares its host's lot: in a container or VM with a CPU quota, or a testbed
host under one, its cgroup says how many cores the group may use and how
often the limit bit in the last interval (throttled periods / periods).
The planner treats a host whose limit binds as a loaded host.

cgroup v1 (``cpu`` controller: cpu.cfs_quota_us, cpu.cfs_period_us,
cpu.stat) and v2 (cpu.max, cpu.stat) are both read; anything missing or
unreadable gives no limit, never an error. A forwarder started by `ip netns
exec` (a fresh sysfs, no cgroup files) mounts them privately first.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from services.bus.pb import vnet_pb2 as pb

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CpuLimit:
    directory: Path
    quota_cores: float  # 0: no quota
    periods: int
    throttled: int


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _stat(directory: Path) -> tuple[int, int]:
    fields = dict(line.split(maxsplit=1) for line in _read(directory / "cpu.stat").splitlines()
                  if " " in line)
    try:
        return int(fields.get("nr_periods", 0)), int(fields.get("nr_throttled", 0))
    except ValueError:
        return 0, 0


def read_limit(proc_cgroup: Path = Path("/proc/self/cgroup"),
               root: Path = CGROUP_ROOT) -> CpuLimit | None:
    """The calling process's CPU cgroup and its limit (None: none found).

    On a hybrid machine the v1 cpu controller, where it is mounted, holds the limit."""
    lines = [line.split(":", 2) for line in _read(proc_cgroup).splitlines()]
    entries = [(h, c, p.lstrip("/")) for h, c, p in (x for x in lines if len(x) == 3)]
    for _, controllers, rel in entries:
        if "cpu" in controllers.split(","):  # v1
            directory = root / "cpu" / rel
            if not directory.is_dir():
                directory = root / controllers / rel
            q = _read(directory / "cpu.cfs_quota_us").strip()
            p = _read(directory / "cpu.cfs_period_us").strip()
            quota = int(q) / int(p) if q.isdigit() and p.isdigit() and int(p) else 0.0
            return CpuLimit(directory, quota, *_stat(directory))
    for hier, controllers, rel in entries:
        if hier == "0" and controllers == "":  # v2: the unified hierarchy
            directory = root / rel
            parts = _read(directory / "cpu.max").split()
            quota = (int(parts[0]) / int(parts[1])
                     if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit()
                     and int(parts[1]) else 0.0)
            return CpuLimit(directory, quota, *_stat(directory))
    return None


def mount_private_cgroups(root: Path = CGROUP_ROOT) -> str:
    """Make the cgroup files readable where a fresh sysfs hid them; what was done.

    `ip netns exec` gives the process its own mount namespace with a new sysfs,
    in which /sys/fs/cgroup is empty. There (only there: it must be empty) the
    cpu hierarchy is mounted again, privately: a tmpfs with cpu/ (cgroup v1), or
    cgroup2 itself. Nothing reaches other mount namespaces (only a namespace the
    parent does not share is touched); root only.
    """
    try:
        if any(root.iterdir()):
            return "present"
        # Only in a mount namespace of our own (`ip netns exec` made it for us),
        # never in one shared with the parent.
        if os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{os.getppid()}/ns/mnt"):
            return "absent"
    except OSError:
        return "unreadable"

    def mount(*argv: str) -> bool:
        return subprocess.run(["mount", *argv], capture_output=True).returncode == 0

    if mount("-t", "tmpfs", "-o", "size=64k", "vnet-cgroup", str(root)):
        cpu = root / "cpu"
        with contextlib.suppress(OSError):
            cpu.mkdir()
        if mount("-t", "cgroup", "-o", "cpu", "vnet-cgroup-cpu", str(cpu)):
            return "mounted v1 cpu"
        if subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
            return "failed"
    return "mounted v2" if mount("-t", "cgroup2", "vnet-cgroup2", str(root)) else "failed"


class CpuWatch:
    """Per-interval samples of the forwarder's CPU limit (cheap: a few small reads)."""

    def __init__(self, proc_cgroup: Path = Path("/proc/self/cgroup"),
                 root: Path = CGROUP_ROOT) -> None:
        self.proc_cgroup = proc_cgroup
        self.root = root
        self.last: CpuLimit | None = None

    def sample(self) -> pb.HostCpu:
        now = read_limit(self.proc_cgroup, self.root)
        if now is None:
            self.last = None
            return pb.HostCpu()
        share = 0.0
        last = self.last
        if last is not None and last.directory == now.directory and now.periods > last.periods:
            share = (now.throttled - last.throttled) / (now.periods - last.periods)
        self.last = now
        return pb.HostCpu(quota_cores=now.quota_cores,
                          throttled_share=min(1.0, max(0.0, share)))
