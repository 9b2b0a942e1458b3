"""A real `vnet planner` process behind a real broker, fed by a test client."""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.bus.client import BusClient
from services.bus.envelope import BusMessage
from services.bus.launch import VNET, Launcher
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings
from tests.planner import world


@pytest.fixture
def launcher() -> Iterator[Launcher]:
    with Launcher() as launch:
        yield launch


@pytest.fixture
def bus(launcher: Launcher) -> BusSettings:
    proc = launcher.start_broker()
    return BusSettings(pub=str(proc.info["pub"]), sub=str(proc.info["sub"]))


def bus_args(bus: BusSettings) -> list[str]:
    return ["--bus-pub", bus.pub, "--bus-sub", bus.sub, "--bus-heartbeat-s", "0.2"]


async def wait_for(client: BusClient, what: str, match: Callable[[BusMessage], bool],
                   timeout: float = 30.0) -> BusMessage:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        for msg in await client.recv_batch(timeout=left):
            if match(msg):
                return msg
    raise AssertionError(f"no {what} within {timeout}s")


def counters(msg: BusMessage) -> dict[str, int]:
    assert isinstance(msg.payload, pb.Heartbeat)
    return dict(msg.payload.counters)


def heartbeat_of_planner(msg: BusMessage) -> bool:
    return msg.kind == "heartbeat" and msg.source == "planner@ctl"


async def test_planner_process_plans_from_bus_messages(bus: BusSettings,
                                                       launcher: Launcher) -> None:
    planner = launcher.start("planner", ["planner", "--host", "ctl", "--algorithm", "noop",
                                         "--republish-s", "0.5", "--min-interval-s", "0",
                                         *bus_args(bus)])
    client = BusClient(bus, "test", "t")
    try:
        for prefix in ("plan", "desired.", "heartbeat.planner"):
            client.subscribe(prefix)
        await client.ready()
        # Its heartbeat comes after its own ready(): its subscriptions are in place.
        await wait_for(client, "planner heartbeat", heartbeat_of_planner)
        for s in world.states():
            client.publish(f"state.{s.host}", s)
        client.publish("links.h1", world.links("h1"))
        client.publish("links.h2", world.links("h2"))
        client.publish("topology.change", world.change())
        msg = await wait_for(client, "plan", lambda m: m.kind == "plan")
        plan = msg.payload
        assert isinstance(plan, pb.Plan)
        assert plan.planner == "noop" and plan.based_on_change == 1
        assert [s.id for s in plan.links_add] == ["h1-h2"]
        desired = await wait_for(client, "desired.h1", lambda m: m.topic == "desired.h1")
        d = desired.payload
        assert isinstance(d, pb.DesiredState)
        assert d.generation == 6  # above the 5 that h2 reported
        assert [(s.id, s.peer_host, s.peer_address) for s in d.links] == [
            ("h1-h2", "h2", "127.0.0.1:7802")]
        assert sorted((r.dst_mac, r.link_id) for r in d.rules) == [
            (world.MACS["b"], "h1-h2"), (world.MACS["d"], "h1-h2")]

        # `vnet plan --explain` reads the (republished) plan from the bus.
        shown = subprocess.run(
            [*VNET, "plan", "--explain", "--timeout", "20", *bus_args(bus)],
            capture_output=True, text=True, timeout=60, check=False)
        assert shown.returncode == 0, shown.stderr
        assert "h1-h2: carries 75.00 MB/s" in shown.stdout
        assert "plan 1 by noop" in shown.stdout

        # Bad input is counted, logged and survived.
        client.publish("traffic.matrix",
                       pb.TrafficMatrix(nodes=["a", "b"], values=[0, math.nan, 0, 0]))
        beat = await wait_for(
            client, "heartbeat counting the bad matrix",
            lambda m: heartbeat_of_planner(m)
            and counters(m).get("bad_traffic_matrix", 0) >= 1)
        assert counters(beat)["plans"] == 1
        assert planner.popen.poll() is None
    finally:
        client.close()


def test_unknown_algorithm_is_refused_with_the_known_names() -> None:
    out = subprocess.run([*VNET, "planner", "--algorithm", "nope"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert "unknown planner 'nope'" in out.stderr and "partition" in out.stderr


async def test_a_third_party_planner_found_by_entry_point_runs_end_to_end(
        tmp_path: Path) -> None:
    # A distribution on the path that declares the example planner, as a
    # third-party package's pyproject would.
    dist = tmp_path / "vnet_example_planner-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vnet-example-planner\n"
                                   "Version: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[vnet.planners]\npack = services.planner.example:PackPlanner\n")
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    with Launcher(env={"PYTHONPATH": path}) as launch:
        broker = launch.start_broker()
        bus = BusSettings(pub=str(broker.info["pub"]), sub=str(broker.info["sub"]))
        launch.start("planner", ["planner", "--host", "ctl", "--algorithm", "pack",
                                 "--no-stability", "--min-interval-s", "0", *bus_args(bus)])
        client = BusClient(bus, "test", "t")
        try:
            client.subscribe("plan")
            client.subscribe("heartbeat.planner")
            await client.ready()
            await wait_for(client, "planner heartbeat", heartbeat_of_planner)
            for s in world.states():
                client.publish(f"state.{s.host}", s)
            client.publish("topology.change", world.change())
            msg = await wait_for(client, "plan", lambda m: m.kind == "plan")
        finally:
            client.close()
    plan = msg.payload
    assert isinstance(plan, pb.Plan)
    assert plan.planner == "pack"
    # Pack fills hosts in name order (h1 has 8 slots): everyone on h1, so b
    # and d move there (no stability policy) and no fast-path link is needed.
    assert {p.guest_id: p.host for p in plan.placement} == {
        "a": "h1", "b": "h1", "c": "h1", "d": "h1"}
    assert sorted((m.guest_id, m.from_host, m.to_host) for m in plan.migrations) == [
        ("b", "h2", "h1"), ("d", "h2", "h1")]
    assert not plan.links_add
