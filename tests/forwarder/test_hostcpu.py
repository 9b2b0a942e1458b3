"""The forwarder's view of its host's CPU limit: cgroup files, and a real quota."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.forwarder.hostcpu import CpuWatch, read_limit

V1 = Path("/sys/fs/cgroup/cpu")


def _v1_tree(tmp: Path, quota: str, stat: str) -> tuple[Path, Path]:
    d = tmp / "fs" / "cpu" / "box"
    d.mkdir(parents=True)
    (d / "cpu.cfs_quota_us").write_text(quota)
    (d / "cpu.cfs_period_us").write_text("100000\n")
    (d / "cpu.stat").write_text(stat)
    proc = tmp / "cgroup"
    proc.write_text("4:memory:/x\n1:cpu,cpuacct:/box\n0::/\n")
    return proc, tmp / "fs"


def test_v1_quota_and_the_throttled_share_of_an_interval(tmp_path: Path) -> None:
    proc, root = _v1_tree(tmp_path, "30000\n", "nr_periods 100\nnr_throttled 10\n")
    limit = read_limit(proc, root)
    assert limit is not None and limit.quota_cores == pytest.approx(0.3)
    watch = CpuWatch(proc, root)
    assert watch.sample().throttled_share == 0.0  # no interval yet
    (root / "cpu" / "box" / "cpu.stat").write_text("nr_periods 200\nnr_throttled 90\n")
    cpu = watch.sample()
    assert cpu.quota_cores == pytest.approx(0.3) and cpu.throttled_share == pytest.approx(0.8)


def test_v2_max_and_no_limit_at_all(tmp_path: Path) -> None:
    d = tmp_path / "fs" / "box"
    d.mkdir(parents=True)
    (d / "cpu.max").write_text("50000 100000\n")
    (d / "cpu.stat").write_text("usage_usec 5\nnr_periods 4\nnr_throttled 1\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/box\n")
    limit = read_limit(proc, tmp_path / "fs")
    assert limit is not None and limit.quota_cores == 0.5 and limit.throttled == 1
    (d / "cpu.max").write_text("max 100000\n")
    assert read_limit(proc, tmp_path / "fs").quota_cores == 0.0  # type: ignore[union-attr]
    proc.write_text("garbage\n")
    assert read_limit(proc, tmp_path / "fs") is None
    assert CpuWatch(proc, tmp_path / "fs").sample().quota_cores == 0.0


@pytest.mark.skipif(os.geteuid() != 0 or not (V1 / "cpu.cfs_quota_us").exists(),
                    reason="needs root and the cgroup-v1 cpu controller")
def test_a_process_in_a_netns_under_a_busy_quota_sees_the_limit_bind(tmp_path: Path) -> None:
    """A real cgroup with 0.2 of a core and a busy loop, and a probe started as the
    testbed starts forwarders (`ip netns exec`, whose fresh sysfs hides the cgroup
    files): it mounts them privately, reads the quota and, over an interval, a
    throttled share near 1. The host's mounts are left as they were."""
    box = V1 / f"vnet-test-hostcpu-{os.getpid()}"
    netns = f"vnet-test-hostcpu-{os.getpid()}"
    box.mkdir()
    subprocess.run(["ip", "netns", "add", netns], check=True)
    mounts_before = Path("/proc/self/mounts").read_text().count("vnet-cgroup")
    busy = None
    probe = None
    try:
        (box / "cpu.cfs_period_us").write_text("100000")
        (box / "cpu.cfs_quota_us").write_text("20000")
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        (box / "cgroup.procs").write_text(str(busy.pid))
        code = ("import sys, time\n"
                "from services.forwarder.hostcpu import CpuWatch, mount_private_cgroups\n"
                "how = mount_private_cgroups(); w = CpuWatch(); sys.stdin.readline()\n"
                "w.sample(); time.sleep(1.0)\n"
                "c = w.sample(); print(how.replace(' ', '_'), c.quota_cores, c.throttled_share)\n")
        probe = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", code],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 cwd=Path(__file__).resolve().parents[2])
        time.sleep(0.5)  # ip execs python: the pid is the probe's
        (box / "cgroup.procs").write_text(str(probe.pid))
        out, _ = probe.communicate("go\n", timeout=30)
        how, quota, share = out.split()
        assert how == "mounted_v1_cpu"
        assert float(quota) == pytest.approx(0.2)
        assert float(share) > 0.5, f"throttled share {share}"
        assert Path("/proc/self/mounts").read_text().count("vnet-cgroup") == mounts_before
    finally:
        for p in (busy, probe):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        for line in (box / "cgroup.procs").read_text().split():
            (V1 / "cgroup.procs").write_text(line)
        box.rmdir()
        subprocess.run(["ip", "netns", "del", netns], check=False)
