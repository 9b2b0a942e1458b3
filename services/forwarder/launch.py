"""Start one forwarder per testbed host: the argv and a ready-line wait.

Shared by the namespace tests, the demo and the benchmarks so they all run
forwarders the same way. Takes the testbed duck-typed (hosts(), proxy_host,
host_netns(), underlay_ip(), guests(), lan_ifname, popen()) to keep the
forwarder package free of a testbed import.
"""

from __future__ import annotations

import select
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

from services.bus.settings import BusSettings

DEFAULT_PORT = 7000
ROOT = Path(__file__).resolve().parents[2]


def listen_address(tb: Any, host: str, port: int = DEFAULT_PORT) -> str:
    return f"{tb.underlay_ip(host)}:{port}"


def forwarder_argv(tb: Any, host: str, bus: BusSettings | None, *, port: int = DEFAULT_PORT,
                   lan: bool = True, extra: list[str] | None = None,
                   only: Collection[str] | None = None) -> list[str]:
    """`vnet forwarder ...` for one testbed host: its guests (those named in `only`, if
    given), the proxy, members."""
    argv = [sys.executable, "-m", "services.cli.main", "forwarder", "--host", host,
            "--listen", listen_address(tb, host, port), "--members", ",".join(tb.hosts())]
    if host == tb.proxy_host:
        argv += ["--proxy"] + (["--lan", tb.lan_ifname] if lan else [])
    else:
        argv += ["--proxy-address", listen_address(tb, tb.proxy_host, port)]
    guests = _guests(tb, host, only)
    for g in guests:
        where = f"tap={g.host_ifname},netns={g.netns}" if g.attach == "tap" \
            else f"iface={g.host_ifname}"
        argv += ["--guest", f"id={g.name},mac={g.mac},ip={g.ip},{where}"]
    if guests:
        argv += ["--mtu", str(max(g.mtu for g in guests))]
    if bus is None:
        argv.append("--no-bus")
    else:
        argv += ["--bus-pub", bus.pub, "--bus-sub", bus.sub]
    return argv + (extra or [])


def start_forwarder(tb: Any, host: str, bus: BusSettings | None, *, log: Path,
                    timeout: float = 30.0, **kw: Any) -> subprocess.Popen[bytes]:
    """Start it in the host's namespace, wait for its ready line, configure TAP guests."""
    with open(log, "ab") as err:
        proc: subprocess.Popen[bytes] = tb.popen(
            tb.host_netns(host), forwarder_argv(tb, host, bus, **kw), stdout=subprocess.PIPE,
            stderr=err, cwd=str(ROOT))
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if not line.startswith(b'{"ready": true'):
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"forwarder {host} not ready in {timeout}s (exit {proc.poll()}): {tail}")
    for g in _guests(tb, host, kw.get("only")):
        if g.attach == "tap":
            tb.configure_guest_interface(g.name, g.host_ifname)
    return proc


def _guests(tb: Any, host: str, only: Collection[str] | None) -> list[Any]:
    return [g for g in tb.guests() if g.host == host and (only is None or g.name in only)]
