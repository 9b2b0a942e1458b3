"""The compose testbed end to end: health, guest traffic only through vnet, inference on
the bus, and a down that leaves nothing. One stack for the module; tests run in order."""

from __future__ import annotations

import json
import select
import time
from typing import Any

import pytest

from tests.compose.stack import Stack, bus_messages, docker_unavailable

pytestmark = [
    pytest.mark.compose,
    pytest.mark.slow,
    pytest.mark.timeout(1500),  # the first test also builds the image and brings the stack up
    pytest.mark.skipif(docker_unavailable() is not None, reason=docker_unavailable() or ""),
]

SERVICES = {"broker", "inference", "planner", "migrator", "proxy", "h1", "h2", "h3", "h4",
            "wan", "g1", "g2", "g3", "g4"}


def ping(stack: Stack, guest: str, ip: str, count: int = 3, deadline_s: int = 20) -> bool:
    """At least one reply (ping stops at `count` replies or after `deadline_s`)."""
    done = stack.exec(guest, ["ping", "-c", str(count), "-W", "2", "-w", str(deadline_s), ip],
                      timeout=deadline_s + 20)
    return done.returncode == 0


def test_up_all_healthy(stack: Stack) -> None:
    states = stack.health()
    assert set(states) == SERVICES
    assert all(v == "healthy" for v in states.values()), states
    print(f"{stack.project}: healthy {stack.healthy_after_s:.1f} s after `up`")


def test_guests_on_different_hosts_ping_through_vnet(stack: Stack) -> None:
    # g1, g2 on hosts of site a; g3, g4 on site b, behind the WAN relay.
    for src, dst in (("g1", 2), ("g1", 3), ("g3", 4), ("g4", 1)):
        assert ping(stack, src, stack.guest_ip(dst)), f"{src} cannot reach g{dst}"
    routes = stack.exec("g1", ["ip", "-4", "route"]).stdout
    assert "default" not in routes, f"a guest must have no way out but its segment: {routes}"


def g1_g3(matrix: dict[str, Any]) -> float:
    """Traffic between g1 and g3 in a traffic.matrix body (both directions)."""
    nodes, values = matrix.get("nodes", []), matrix.get("values", [])
    if "g1" not in nodes or "g3" not in nodes:
        return 0.0
    i, j, n = nodes.index("g1"), nodes.index("g3"), len(nodes)
    return float(values[i * n + j]) + float(values[j * n + i])


def has_g1_g3_edge(change: dict[str, Any]) -> bool:
    return any({e.get("src"), e.get("dst")} == {"g1", "g3"} for e in change.get("edges", []))


def test_inferred_topology_appears_on_the_bus(stack: Stack) -> None:
    """g1 pings g3: the pair shows in traffic.matrix and as an edge in topology.change."""
    tail = stack.popen("inference", ["vnet", "tail", "--json", "--duration", "90",
                                     "traffic.matrix", "topology.change"])
    matrices: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    try:
        time.sleep(2.0)  # the tail's subscription reaches the broker
        stack.exec_detached("g1", ["ping", "-q", "-i", "0.05", "-c", "1200", stack.guest_ip(3)])
        assert tail.stdout is not None
        deadline = time.monotonic() + 75
        while time.monotonic() < deadline:
            if any(g1_g3(m) > 0 for m in matrices) and any(map(has_g1_g3_edge, changes)):
                break
            if not select.select([tail.stdout], [], [], 1.0)[0]:
                continue
            line = tail.stdout.readline()
            if not line:
                break
            for m in bus_messages(line):
                (matrices if m["topic"] == "traffic.matrix" else changes).append(m["body"])
    finally:
        tail.kill()
        _, err = tail.communicate(timeout=30)
    assert any(g1_g3(m) > 0 for m in matrices), f"no g1-g3 traffic in {matrices[-3:]}\n{err}"
    assert any(map(has_g1_g3_edge, changes)), f"no g1-g3 edge in {changes}\n{err}"


def test_no_path_but_vnet(stack: Stack) -> None:
    """With g3's forwarder stopped nothing reaches g3; started again, it is back."""
    stack.stop("h3")
    try:
        assert not ping(stack, "g1", stack.guest_ip(3), deadline_s=5), "g3 reachable without h3"
        assert not ping(stack, "g4", stack.guest_ip(3), deadline_s=5), "g3 reachable without h3"
        assert ping(stack, "g1", stack.guest_ip(4)), "g4 must stay reachable"
    finally:
        stack.start("h3")
    stack.wait_healthy(["h3"], timeout_s=120)
    assert ping(stack, "g1", stack.guest_ip(3), count=5), "g3 not back after h3 restarted"


def test_planned_migration_keeps_a_tcp_stream(stack: Stack) -> None:
    """g1 streams to g3 (iperf3) while the migrator moves g1 from h1's segment to h2's:
    the move ends done, the stream carries on without a reset, g1 answers at h2."""
    stream = stack.popen("g1", ["iperf3", "-c", stack.guest_ip(3), "-B", stack.guest_ip(1),
                                "-t", "20", "-b", "4M", "-i", "1", "-J"])
    try:
        time.sleep(5.0)  # the stream runs before the move
        moved = stack.exec("migrator", ["vnet", "migrate", "g1", "h2", "--timeout", "60"],
                           timeout=90)
        print(moved.stdout, moved.stderr)
        assert moved.returncode == 0, f"move failed:\n{moved.stdout}\n{moved.stderr}"
        assert "done: g1 h1 -> h2" in moved.stdout, moved.stdout
        out, err = stream.communicate(timeout=60)
    finally:
        if stream.poll() is None:
            stream.kill()
            stream.communicate(timeout=30)
    result = json.loads(out)
    assert stream.returncode == 0 and "error" not in result, f"stream broke: {err}\n{out[-2000:]}"
    seconds = [iv["sum"]["bytes"] for iv in result["intervals"]]
    assert len(seconds) >= 19 and all(b > 0 for b in seconds[-5:]), seconds
    print(f"stream bytes per second around the move: {seconds}")
    nets = stack.exec("g1", ["ip", "-o", "link"]).stdout  # one segment plug left
    assert nets.count("link/ether") == 1, nets
    routes = stack.exec("g1", ["ip", "-4", "route"]).stdout
    assert "default" not in routes, routes
    for src in ("g3", "g4"):
        assert ping(stack, src, stack.guest_ip(1)), f"{src} cannot reach g1 at h2"


def test_down_leaves_nothing(stack: Stack) -> None:
    assert stack.leftovers(), "the project's objects should be found before down"
    done = stack.down()
    assert done.returncode == 0, done.stderr
    assert stack.leftovers() == []
