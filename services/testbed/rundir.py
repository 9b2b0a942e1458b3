"""A testbed run's record on disk, and removing a run's leftovers by its exact prefix.

Each run owns ``<run root>/<prefix>/`` (ipc sockets, logs, pid files) and a
``state.json`` there naming its owner, namespaces and processes, written as they are
created, so `vnet testbed down PREFIX` can clean up after a crash. Processes are
recorded with their start time so a recycled pid is never killed; namespaces are
found by the run's exact prefix. Nothing is found or killed by a broad name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyroute2 import netns as pyr_netns

RUN_ROOT_ENV = "VNET_TESTBED_RUN_ROOT"
DEFAULT_RUN_ROOT = "/run/vnet-testbed"
"""Where run directories live (tmpfs: ipc sockets work, nothing survives a reboot)."""
NETNS_DIR = Path("/run/netns")
PREFIX_RE = re.compile(r"^vt[0-9a-f]{4}$")


def run_root() -> Path:
    return Path(os.environ.get(RUN_ROOT_ENV, DEFAULT_RUN_ROOT))


@dataclass
class RunState:
    prefix: str
    owner_pid: int
    owner_start: int | None
    spec: str
    created: float
    namespaces: list[str] = field(default_factory=list)
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    ready: bool = False
    owner_cli: bool = False
    """True when the owner is `vnet testbed up`, which tears down on SIGTERM."""

    def save(self, run_dir: Path) -> None:
        tmp = run_dir / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(run_dir / "state.json")

    @classmethod
    def load(cls, run_dir: Path) -> RunState:
        d = json.loads((run_dir / "state.json").read_text())
        d["processes"] = [(int(p), None if s is None else int(s)) for p, s in d["processes"]]
        return cls(**d)


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.match(prefix):
        raise ValueError(f"prefix {prefix!r} is not a testbed run prefix (like 'vt3f2a')")
    return prefix


def list_netns() -> list[str]:
    return sorted(str(n) for n in pyr_netns.listnetns())


def new_prefix() -> str:
    """A short prefix used by no run directory and no namespace."""
    existing = set(list_netns())
    for _ in range(1000):
        prefix = "vt" + secrets.token_hex(2)
        if not (run_root() / prefix).exists() and not any(
                n.startswith(prefix + "-") for n in existing):
            return prefix
    raise RuntimeError("could not find a free testbed prefix")


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22, counted after the parenthesised command name (which may hold spaces).
    return int(stat[stat.rindex(")") + 2:].split()[19])


def alive(pid: int, start: int | None) -> bool:
    now = proc_start_time(pid)
    return now is not None and (start is None or now == start)


def netns_pids(name: str) -> list[int]:
    """Pids of processes whose network namespace is `name` (by inode, like `ip netns pids`)."""
    try:
        st = os.stat(NETNS_DIR / name)
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (ns.st_ino, ns.st_dev) == (st.st_ino, st.st_dev):
            pids.append(int(entry))
    return pids


def wait_gone(procs: list[tuple[int, int | None]], timeout: float) -> list[tuple[int, int | None]]:
    """Poll until every process has exited (or been reaped by someone); return survivors."""
    deadline = time.monotonic() + timeout
    left = [p for p in procs if alive(*p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if alive(*p) and not _zombie(p[0])]
    return [p for p in left if not _zombie(p[0])]


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def signal_group_or_pid(pid: int, sig: int) -> None:
    """Signal the process group led by `pid` if it leads one, else the process alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop_processes(procs: list[tuple[int, int | None]], timeout: float = 5.0) -> None:
    """SIGTERM (to each group), wait, then SIGKILL whatever is left."""
    live = [p for p in procs if alive(*p)]
    for pid, _ in live:
        signal_group_or_pid(pid, signal.SIGTERM)
    for pid, _ in wait_gone(live, timeout):
        signal_group_or_pid(pid, signal.SIGKILL)


def remove_namespaces(names: list[str]) -> list[str]:
    """Kill what runs inside the namespaces, then delete them; return those that remain."""
    inside = [(pid, proc_start_time(pid)) for n in names for pid in netns_pids(n)]
    inside = [p for p in inside if p[0] != os.getpid()]
    stop_processes(inside, timeout=3.0)
    existing = set(list_netns())
    for n in names:
        if n in existing:
            with contextlib.suppress(OSError):
                pyr_netns.remove(n)
    existing = set(list_netns())
    return [n for n in names if n in existing]


@dataclass(frozen=True)
class RunInfo:
    prefix: str
    run_dir: Path | None
    owner_pid: int | None
    owner_alive: bool
    spec: str
    namespaces: list[str]


def list_runs() -> list[RunInfo]:
    """Runs with a run directory, plus namespace sets whose run directory is gone."""
    runs: dict[str, RunInfo] = {}
    root = run_root()
    all_ns = list_netns()
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if not PREFIX_RE.match(d.name):
                continue
            try:
                st = RunState.load(d)
            except (OSError, ValueError, TypeError, KeyError):
                runs[d.name] = RunInfo(d.name, d, None, False, "?",
                                       [n for n in all_ns if n.startswith(d.name + "-")])
                continue
            runs[d.name] = RunInfo(st.prefix, d, st.owner_pid, alive(st.owner_pid, st.owner_start),
                                   st.spec, [n for n in all_ns if n.startswith(d.name + "-")])
    for n in all_ns:
        prefix = n.split("-", 1)[0]
        if PREFIX_RE.match(prefix) and prefix not in runs:
            runs[prefix] = RunInfo(prefix, None, None, False, "?",
                                   [m for m in all_ns if m.startswith(prefix + "-")])
    return sorted(runs.values(), key=lambda r: r.prefix)


class OwnerAlive(RuntimeError):
    """The run's owner is a live program other than `vnet testbed up`."""


def down(prefix: str, owner_timeout: float = 15.0, force: bool = False) -> list[str]:
    """Remove a run's leftovers; returns what could not be removed (empty when clean).

    A live `vnet testbed up` owner is asked to stop first (SIGTERM) so it tears
    down itself; then recorded processes, anything inside the run's namespaces,
    the namespaces and the run directory go. A live owner of another kind (a test,
    a benchmark using the Python API) is never signalled: `OwnerAlive` is raised
    unless `force`, which removes the run from under it.
    """
    check_prefix(prefix)
    run_dir = run_root() / prefix
    procs: list[tuple[int, int | None]] = []
    names: list[str] = []
    if (run_dir / "state.json").exists():
        try:
            st = RunState.load(run_dir)
        except (OSError, ValueError, TypeError, KeyError):
            st = None
        if st is not None:
            owner_alive = st.owner_pid != os.getpid() and alive(st.owner_pid, st.owner_start)
            if owner_alive and not st.owner_cli and not force:
                raise OwnerAlive(
                    f"run {prefix} belongs to live process {st.owner_pid} (not `vnet testbed "
                    "up`); stop that process, or force the removal")
            if owner_alive and st.owner_cli:
                os.kill(st.owner_pid, signal.SIGTERM)
                if wait_gone([(st.owner_pid, st.owner_start)], owner_timeout):
                    os.kill(st.owner_pid, signal.SIGKILL)
            procs = list(st.processes)
            names = list(st.namespaces)
    stop_processes(procs)
    names += [n for n in list_netns() if n.startswith(prefix + "-") and n not in names]
    left = remove_namespaces(names)
    if run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
    return [f"namespace {n}" for n in left]
