"""Shared helpers for the testbed tests: skip reasons and leftover checks."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from services.testbed import rundir

SPECS = Path(__file__).resolve().parents[2] / "services" / "testbed" / "specs"
EXAMPLES = sorted(SPECS.glob("*.toml"))


def netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "tc", "ping"):
        if shutil.which(tool) is None:
            return f"needs {tool!r} (apt: iproute2, iputils-ping)"
    return None


needs_netns = pytest.mark.skipif(netns_unavailable() is not None,
                                 reason=netns_unavailable() or "")


def root_links() -> set[str]:
    with IPRoute() as ipr:
        return {str(link.get("ifname")) for link in ipr.get_links()}


def leftovers(prefix: str, pids: list[int] = ()) -> list[str]:  # type: ignore[assignment]
    """Everything of run `prefix` still present: namespaces, root links, run dir, processes.

    Other runs (other tests, other people's testbeds) may come and go meanwhile, so
    only what carries this run's exact prefix, or the pids it started, is looked at.
    """
    left = [f"netns {n}" for n in rundir.list_netns() if n.startswith(prefix + "-")]
    left += [f"link {n}" for n in root_links() if n.startswith(prefix)]
    if (rundir.run_root() / prefix).exists():
        left.append(f"run dir {rundir.run_root() / prefix}")
    left += [f"pid {p}" for p in pids if rundir.alive(p, None) and not rundir._zombie(p)]
    return left
