"""The bus over real sockets: a `vnet broker` process and real clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import zmq

from services.bus import envelope
from services.bus.client import BusClient
from services.bus.envelope import BusMessage
from services.bus.paircols import frame_counts_wire, rows_of
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings
from tests.bus.samples import SAMPLES

MakeClient = Callable[..., BusClient]


async def collect(client: BusClient, n: int, timeout: float = 10.0, source: str | None = None
                  ) -> list[BusMessage]:
    """Messages (from one source, if given) until at least n came."""
    got: list[BusMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"received {len(got)} of {n} messages within {timeout}s")
        got += [m for m in await client.recv_batch(left) if source in (None, m.source)]
    return got


async def test_every_message_type_crosses_the_broker(bus: BusSettings, make_client: MakeClient
                                                     ) -> None:
    sub, pub = make_client(bus, "sub"), make_client(bus, "pub")
    for topic, _ in SAMPLES.values():
        if not topic.startswith("_probe"):
            sub.subscribe(topic)
    await sub.ready()
    await pub.ready()
    sent = {k: v for k, v in SAMPLES.items() if k != "probe"}
    for topic, payload in sent.values():
        pub.publish(topic, payload)
    got = await collect(sub, len(sent))
    assert {m.kind: m.payload for m in got} == {k: p for k, (_, p) in sent.items()}
    assert all(m.source == "pub@t" for m in got)
    assert [m.seq for m in got] == sorted(m.seq for m in got)


async def test_a_payload_published_in_wire_form_arrives_as_that_message(
        bus: BusSettings, make_client: MakeClient) -> None:
    sub, pub = make_client(bus, "sub"), make_client(bus, "pub")
    sub.subscribe("frames.h1")
    await sub.ready()
    await pub.ready()
    rows = [("02:00:00:00:00:01", "02:00:00:00:00:02", 3, 300, 9, 900)]
    pub.publish_wire("frames.h1", "frame_counts", frame_counts_wire("h1", 4, 0.05, rows))
    pub.publish("frames.h1", pb.FrameCounts(host="h1", interval_index=5))
    got = await collect(sub, 2)
    assert [m.kind for m in got] == ["frame_counts", "frame_counts"]
    assert rows_of(got[0].payload) == rows  # type: ignore[arg-type]
    assert [m.seq for m in got] == [1, 2]  # one sequence per topic, whichever way it was sent
    assert pub.counters["sent"] >= 2


async def test_broker_fans_out_to_every_subscriber(bus: BusSettings, make_client: MakeClient
                                                   ) -> None:
    subs = [make_client(bus, f"sub{i}") for i in range(3)]
    for i, sub in enumerate(subs):
        sub.subscribe("frames." if i < 2 else "frames.h2")
        await sub.ready()
    pub = make_client(bus, "pub")
    await pub.ready()
    for i in range(200):
        pub.publish(f"frames.h{1 + i % 2}", pb.FrameCounts(host="x", interval_index=i))
    got = await asyncio.gather(collect(subs[0], 200), collect(subs[1], 200), collect(subs[2], 100))
    assert [m.payload.interval_index for m in got[0]] == list(range(200))  # type: ignore[attr-defined]
    assert [m.payload.interval_index for m in got[1]] == list(range(200))  # type: ignore[attr-defined]
    assert {m.topic for m in got[2]} == {"frames.h2"}
    assert subs[0].counters["gaps"] == 0


def _env(seq: int, instance: int = 77, source: str = "raw@h") -> list[bytes]:
    return envelope.encode("frames.raw", source, instance, seq, 0.0, pb.FrameCounts(host="raw"))


async def wait_delivery(raw: zmq.Socket[bytes], sub: BusClient, timeout: float = 10.0) -> None:
    """Publish from a raw socket until the subscriber sees it: the path is up."""
    deadline = time.monotonic() + timeout
    seq = 1
    while time.monotonic() < deadline:
        raw.send_multipart(envelope.encode("frames.raw", "warmup@h", 1, seq, 0.0,
                                           pb.FrameCounts()))
        seq += 1
        if await sub.recv_batch(0.05):
            return
    raise AssertionError("raw publisher never got through the broker")


async def test_sequence_gaps_and_restarts_are_counted(
    bus: BusSettings, make_client: MakeClient, raw_pub: Callable[[str], zmq.Socket[bytes]]
) -> None:
    sub = make_client(bus)
    sub.subscribe("frames.raw")
    await sub.ready()
    raw = raw_pub(bus.pub)
    await wait_delivery(raw, sub)
    for seq in (1, 2, 5, 6, 6, 10):
        raw.send_multipart(_env(seq))
    raw.send_multipart(_env(1, instance=78))  # restarted source
    raw.send_multipart(_env(3, instance=78))
    got = await collect(sub, 7, source="raw@h")
    assert [(m.instance, m.seq) for m in got] == [
        (77, 1), (77, 2), (77, 5), (77, 6), (77, 10), (78, 1), (78, 3)]
    assert sub.counters["gaps"] == 2 + 3 + 1
    assert sub.counters["dropped_stale"] == 1
    assert sub.counters["source_restarts"] == 1


def _bad_inputs(max_bytes: int) -> dict[str, list[bytes]]:
    good = _env(1)
    env = pb.Envelope()
    env.ParseFromString(good[1])
    wrong_version = pb.Envelope()
    wrong_version.CopyFrom(env)
    wrong_version.schema_version = 99
    return {
        "unparsable": [b"frames.raw", b"\x0a\xff\xff\xff\xff\x0f not protobuf"],
        "wrong_version": [b"frames.raw", wrong_version.SerializeToString()],
        "truncated": [b"frames.raw", good[1][: len(good[1]) // 2]],
        "wrong_payload": [b"frames.raw", _env_with_heartbeat()],
        "oversized_for_client": [b"frames.raw", b"\x00" * (max_bytes + 10)],
    }


def _env_with_heartbeat() -> bytes:
    env = pb.Envelope(schema_version=envelope.SCHEMA_VERSION, source="raw@h", instance=5, seq=1)
    env.heartbeat.service = "x"
    return env.SerializeToString()


async def test_bad_input_is_dropped_counted_and_the_bus_goes_on(
    bus: BusSettings, make_client: MakeClient, raw_pub: Callable[[str], zmq.Socket[bytes]]
) -> None:
    # The subscriber's limit is below the broker's, so oversize reaches it.
    small = BusSettings(pub=bus.pub, sub=bus.sub, max_message_bytes=4096)
    sub = make_client(small)
    sub.subscribe("frames.raw")
    await sub.ready()
    raw = raw_pub(bus.pub)
    await wait_delivery(raw, sub)
    for frames in _bad_inputs(4096).values():
        raw.send_multipart(frames)
    raw.send_multipart(_env(1, instance=999, source="after@h"))
    await collect(sub, 1, source="after@h")
    counters = sub.counters.snapshot()
    assert counters["dropped_unparsable"] >= 1
    assert counters["dropped_wrong_version"] == 1
    assert counters["dropped_wrong_payload"] == 1
    assert counters["dropped_oversized"] == 1
    # A half envelope fails to parse or loses its payload: either way dropped.
    assert counters["dropped_unparsable"] + counters.get("dropped_no_payload", 0) == 2


async def test_broker_drops_malformed_and_oversized_and_says_so(
    launcher: object, make_client: MakeClient, raw_pub: Callable[[str], zmq.Socket[bytes]]
) -> None:
    from services.bus.launch import Launcher

    assert isinstance(launcher, Launcher)
    proc = launcher.start_broker(["--check", "--bus-heartbeat-s", "0.1",
                                  "--bus-max-message-bytes", "2048"])
    bus = BusSettings(pub=str(proc.info["pub"]), sub=str(proc.info["sub"]))
    sub = make_client(bus)
    sub.subscribe("frames.raw")
    sub.subscribe("heartbeat.broker")
    await sub.ready()
    raw = raw_pub(bus.pub)
    await wait_delivery(raw, sub)
    raw.send_multipart([b"frames.raw"])
    raw.send_multipart([b"frames.raw", b"x", b"y"])
    raw.send_multipart([b"frames.raw", b"\x00" * 5000])
    raw.send_multipart(_env(1, source="after@h"))
    deadline = time.monotonic() + 10
    seen_after = False
    counters: dict[str, int] = {}
    while time.monotonic() < deadline:
        for msg in await sub.recv_batch(0.5):
            if msg.source == "after@h":
                seen_after = True
            if msg.kind == "heartbeat" and seen_after:
                counters = dict(msg.payload.counters)  # type: ignore[attr-defined]
        if counters.get("dropped_oversized") and counters.get("dropped_bad_frames") == 2:
            break
    assert seen_after
    assert counters.get("dropped_bad_frames") == 2
    assert counters.get("dropped_oversized") == 1
    assert sub.counters.snapshot().get("dropped_oversized", 0) == 0
    assert proc.popen.poll() is None


async def test_ready_times_out_without_a_broker(make_client: MakeClient) -> None:
    from services.bus.client import BusTimeout

    nowhere = BusSettings(pub="tcp://127.0.0.1:9", sub="tcp://127.0.0.1:9")
    with pytest.raises(BusTimeout, match="is `vnet broker` running"):
        await make_client(nowhere).ready(timeout=0.3)


async def test_following_some_topics_of_a_source_shows_no_false_gaps(
    bus: BusSettings, make_client: MakeClient
) -> None:
    sub = make_client(bus, "sub")
    sub.subscribe("state.")
    await sub.ready()
    pub = make_client(bus, "pub")
    await pub.ready()
    for i in range(50):
        pub.publish("frames.h1", pb.FrameCounts(host="h1", interval_index=i))
        pub.publish("state.h1", pb.ForwarderState(host="h1", generation=i + 1))
    got = await collect(sub, 50)
    assert [m.payload.generation for m in got] == list(range(1, 51))  # type: ignore[attr-defined]
    assert [m.seq for m in got] == list(range(1, 51))
    assert sub.counters["gaps"] == 0
