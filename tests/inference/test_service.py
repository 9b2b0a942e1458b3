"""`vnet inference` as a real process behind a real broker.

The test plays the forwarders: one BusClient per host publishes the same
ForwarderState and FrameCounts payloads real forwarders publish, and reads
back the service's topology.change, traffic.matrix and heartbeats. Then
`vnet topology` and `vnet matrix` read the live bus and write their files.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.bus import topics
from services.bus.client import BusClient
from services.bus.launch import Launcher, Process
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings
from services.inference import shapes
from services.inference.simulate import Simulation

N_GUESTS = 12
INTERVAL_S = 0.1


@pytest.fixture
def launcher() -> Iterator[Launcher]:
    with Launcher() as launcher:
        yield launcher


def _bus_args(broker: Process) -> list[str]:
    return ["--bus-pub", str(broker.info["pub"]), "--bus-sub", str(broker.info["sub"])]


async def _wait_heartbeat(listener: BusClient, deadline: float) -> pb.Heartbeat:
    while time.monotonic() < deadline:
        for msg in await listener.recv_batch(0.2):
            if topics.exact(msg.topic, "heartbeat.inference"):
                assert isinstance(msg.payload, pb.Heartbeat)
                return msg.payload
    raise AssertionError("no heartbeat from vnet inference")


async def test_ring_through_a_real_broker(launcher: Launcher, tmp_path: Path) -> None:
    broker = launcher.start_broker()
    settings = BusSettings(pub=str(broker.info["pub"]), sub=str(broker.info["sub"]))
    service = launcher.start("inference", [
        "inference", "--host", "t1", *_bus_args(broker),
        "--update-rate-hz", "10", "--smoothing-window-s", "0.5", "--damping-s", "1",
        "--matrix-period-s", "0.2", "--bus-heartbeat-s", "0.2",
    ])
    sim = Simulation(N_GUESTS, n_hosts=3, interval_s=INTERVAL_S, seed=21)
    ring = shapes.generate("ring", N_GUESTS)
    sim.set_topology(ring)
    forwarders = {h: BusClient(settings, "forwarder", h) for h in sim.hosts}
    listener = BusClient(settings, "test", "t1")
    try:
        for root in (topics.TOPOLOGY_CHANGE, topics.TRAFFIC_MATRIX, "heartbeat.inference"):
            listener.subscribe(root)
        await listener.ready()
        for client in forwarders.values():
            await client.ready()
        # A heartbeat means the service subscribed before it went ready.
        await _wait_heartbeat(listener, time.monotonic() + 20)

        async def play(stop: asyncio.Event) -> None:
            """Every host's state each 0.5 s and its counts each interval."""
            k = 0
            while not stop.is_set():
                if k % 5 == 0:
                    for host, client in forwarders.items():
                        client.publish(topics.join(topics.STATE, host), sim.state(host))
                for host, client in forwarders.items():
                    client.publish(topics.join(topics.FRAMES, host), sim.interval(host))
                k += 1
                await asyncio.sleep(INTERVAL_S)

        stop = asyncio.Event()
        player = asyncio.create_task(play(stop))
        try:
            change = await _wait_change(listener, time.monotonic() + 30)
            want = {
                tuple(sorted((sim.ids[a], sim.ids[b]), key=lambda s: int(s[1:])))
                for a, b in ring.edges
            }
            assert {(e.src, e.dst) for e in change.edges} == want
            assert change.shape == "ring"
            assert change.params.update_rate_hz == 10
            # A malformed count is dropped and counted; the service keeps going.
            forwarders["h1"].publish("frames.h1", pb.FrameCounts(host="h1", interval_s=-1))
            beat = await _wait_counter(listener, "counts_malformed", time.monotonic() + 20)
            assert beat.counters["pairs_group"] > 0
            assert beat.counters["pairs_unknown_mac"] > 0
            # The terminal views read the live bus.
            dot, png, heat = tmp_path / "t.dot", tmp_path / "t.png", tmp_path / "m.png"
            topo = launcher.start("topology", [
                "topology", *_bus_args(broker), "--dot", str(dot), "--png", str(png),
                "--timeout", "20",
            ], stdout=subprocess.PIPE)
            matrix = launcher.start("matrix", [
                "matrix", *_bus_args(broker), "--png", str(heat), "--timeout", "20",
            ], stdout=subprocess.PIPE)
            for proc in (topo, matrix):
                deadline = time.monotonic() + 60
                while proc.popen.poll() is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert proc.popen.returncode == 0
            assert topo.popen.stdout is not None
            text = topo.popen.stdout.read().decode()
            assert "topology: ring" in text
            assert '"g1" -- "g2"' in dot.read_text()
            assert png.read_bytes()[:4] == b"\x89PNG"
            assert heat.read_bytes()[:4] == b"\x89PNG"
        finally:
            stop.set()
            await player
    finally:
        for client in [*forwarders.values(), listener]:
            client.close()
    assert service.stop() == 0


async def _wait_change(listener: BusClient, deadline: float) -> pb.TopologyChange:
    while time.monotonic() < deadline:
        for msg in await listener.recv_batch(0.2):
            if msg.topic == topics.TOPOLOGY_CHANGE:
                assert isinstance(msg.payload, pb.TopologyChange)
                return msg.payload
    raise AssertionError("no topology.change within the deadline")


async def _wait_counter(listener: BusClient, name: str, deadline: float) -> pb.Heartbeat:
    while time.monotonic() < deadline:
        beat = await _wait_heartbeat(listener, deadline)
        if beat.counters[name] > 0:
            return beat
    raise AssertionError(f"counter {name} never rose in the heartbeats")
