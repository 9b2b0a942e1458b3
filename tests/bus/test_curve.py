"""CurveZMQ: allow-listed keys get through, unknown keys get nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import zmq.auth

from services.bus import keys
from services.bus.client import BusClient, BusTimeout
from services.bus.launch import Launcher
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings

PLAN = pb.Plan(plan_id=1, planner="test", explanation="x")


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    keys.init(directory)
    keys.add(directory, "worker")
    keys.add(directory, "planner", control=True)
    # A well-formed key pair the broker has never heard of.
    zmq.auth.create_certificates(directory / "private", "stranger")
    return directory


@pytest.fixture
def curve_bus(launcher: Launcher, keydir: Path) -> BusSettings:
    proc = launcher.start_broker(["--bus-keys", str(keydir), "--bus-heartbeat-s", "0.2"])
    return BusSettings(pub=str(proc.info["pub"]), sub=str(proc.info["sub"]), keys=str(keydir))


def client(curve_bus: BusSettings, identity: str, made: list[BusClient]) -> BusClient:
    settings = BusSettings(pub=curve_bus.pub, sub=curve_bus.sub, keys=curve_bus.keys,
                           identity=identity)
    c = BusClient(settings, identity, "t")
    made.append(c)
    return c


@pytest.fixture
def made() -> list[BusClient]:
    clients: list[BusClient] = []
    yield clients  # type: ignore[misc]
    for c in clients:
        c.close()


async def drain_for(c: BusClient, seconds: float) -> list[str]:
    topics: list[str] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        topics += [m.topic for m in await c.recv_batch(left)]
    return topics


async def test_allow_listed_client_gets_through(curve_bus: BusSettings, made: list[BusClient]
                                                ) -> None:
    sub = client(curve_bus, "worker", made)
    sub.subscribe("frames.")
    await sub.ready()
    pub = client(curve_bus, "planner", made)
    await pub.ready()
    pub.publish("frames.h1", pb.FrameCounts(host="h1"))
    msg = await sub.recv(5)
    assert msg is not None and msg.topic == "frames.h1" and msg.source == "planner@t"


async def test_unknown_key_gets_nothing_through(curve_bus: BusSettings, made: list[BusClient]
                                                ) -> None:
    sub = client(curve_bus, "worker", made)
    sub.subscribe("")
    await sub.ready()
    stranger = client(curve_bus, "stranger", made)
    stranger.subscribe("")
    with pytest.raises(BusTimeout):
        await stranger.ready(timeout=1.0)
    stranger.publish("frames.h9", pb.FrameCounts(host="h9"))
    friend = client(curve_bus, "planner", made)
    await friend.ready()
    friend.publish("frames.h1", pb.FrameCounts(host="h1"))
    seen = await drain_for(sub, 1.0)
    assert "frames.h1" in seen and "frames.h9" not in seen
    assert [m for m in stranger.drain() if not m.topic.startswith("_probe")] == []
    beats = [t for t in seen if t.startswith("heartbeat.broker")]
    assert beats, "the broker's heartbeat should reach an allowed subscriber"


async def test_only_control_keys_may_publish_plans(curve_bus: BusSettings, made: list[BusClient]
                                                   ) -> None:
    sub = client(curve_bus, "worker", made)
    sub.subscribe("plan")
    sub.subscribe("desired.")
    sub.subscribe("heartbeat.broker")
    await sub.ready()
    worker = client(curve_bus, "worker", made)
    planner = client(curve_bus, "planner", made)
    await worker.ready()
    await planner.ready()
    worker.publish("plan", PLAN)
    worker.publish("desired.h1", pb.DesiredState(host="h1", generation=1))
    planner.publish("plan", PLAN)
    got: list[tuple[str, str]] = []
    unauthorized = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (unauthorized < 2 or not got):
        for m in await sub.recv_batch(0.5):
            if m.kind == "heartbeat":
                unauthorized = m.payload.counters["dropped_unauthorized"]  # type: ignore[attr-defined]
            else:
                got.append((m.topic, m.source))
    assert got == [("plan", "planner@t")]
    assert unauthorized == 2


def test_client_without_identity_is_refused(keydir: Path) -> None:
    with pytest.raises(ValueError, match="needs an identity"):
        BusClient(BusSettings(keys=str(keydir)), "x", "t")
    with pytest.raises(keys.MissingKey, match="vnet keys add"):
        BusClient(BusSettings(keys=str(keydir), identity="nobody"), "x", "t")
