"""Pure tests of the envelope and sequence tracking: no sockets."""

from __future__ import annotations

import pytest

from services.bus import envelope, topics
from services.bus.envelope import BadMessage
from services.bus.pb import vnet_pb2 as pb
from services.bus.sequence import SequenceTracker, SeqVerdict
from tests.bus.samples import SAMPLES

PAYLOAD_FIELDS = [f.name for f in pb.Envelope.DESCRIPTOR.oneofs_by_name["payload"].fields]


def test_samples_cover_every_payload() -> None:
    assert sorted(SAMPLES) == sorted(PAYLOAD_FIELDS)


@pytest.mark.parametrize("kind", PAYLOAD_FIELDS)
def test_encode_decode_round_trip(kind: str) -> None:
    topic, payload = SAMPLES[kind]
    frames = envelope.encode(topic, "svc@h", 42, 9, 1234.5, payload)
    msg = envelope.decode(frames)
    assert (msg.topic, msg.source, msg.instance, msg.seq, msg.ts, msg.kind) == (
        topic, "svc@h", 42, 9, 1234.5, kind)
    assert msg.payload == payload


def test_encode_refuses_payload_the_topic_does_not_carry() -> None:
    with pytest.raises(TypeError, match="carries heartbeat"):
        envelope.encode("heartbeat.x", "s@h", 1, 1, 0.0, pb.Plan())


def _frames(**fields: object) -> list[bytes]:
    env = pb.Envelope(schema_version=envelope.SCHEMA_VERSION, source="s@h", instance=1, seq=1)
    for key, value in fields.items():
        setattr(env, key, value)
    env.heartbeat.service = "x"
    return [b"heartbeat.x", env.SerializeToString()]


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([b"heartbeat.x"], "bad_frames"),
        ([b"a", b"b", b"c"], "bad_frames"),
        ([b"heartbeat.x", b"\xff" * 300], "oversized"),
        ([b"\xff\xfe", b""], "bad_topic"),
        ([b"heartbeat.x", b"\x0a\xff\xff\xff\xff\x0f garbage"], "unparsable"),
        (_frames(schema_version=2), "wrong_version"),
        ([b"heartbeat.x", pb.Envelope(schema_version=1, source="s", seq=1).SerializeToString()],
         "no_payload"),
        (_frames(source=""), "no_source"),
        (_frames(seq=0), "no_source"),
        ([b"plan", _frames()[1]], "wrong_payload"),
    ],
)
def test_decode_rejects_bad_input_with_a_reason(frames: list[bytes], reason: str) -> None:
    with pytest.raises(BadMessage) as info:
        envelope.decode(frames, max_bytes=200)
    assert info.value.reason == reason


def test_truncated_envelope_is_rejected() -> None:
    topic, payload = SAMPLES["forwarder_state"]
    _, body = envelope.encode(topic, "s@h", 1, 1, 0.0, payload)
    rejected = 0
    for cut in range(1, len(body)):
        try:
            envelope.decode([topic.encode(), body[:cut]])
        except BadMessage:
            rejected += 1
    # Every cut either fails to parse or loses the payload it must carry,
    # except cuts that end exactly on a field boundary inside the payload,
    # which protobuf cannot tell from a shorter message.
    assert rejected >= len(body) - 10


def test_sequence_tracker_counts_gaps_restarts_and_stale() -> None:
    seq = SequenceTracker()
    a, b = ("a", "frames.h1"), ("a", "state.h1")
    assert seq.observe(a, 1, 1) == (SeqVerdict.NEW_SOURCE, 0)
    assert seq.observe(a, 1, 2) == (SeqVerdict.IN_ORDER, 0)
    assert seq.observe(a, 1, 5) == (SeqVerdict.GAP, 2)
    assert seq.observe(a, 1, 5) == (SeqVerdict.STALE, 0)
    assert seq.observe(a, 2, 1) == (SeqVerdict.RESTART, 0)
    assert seq.observe(a, 2, 3) == (SeqVerdict.GAP, 1)
    assert seq.observe(b, 2, 100) == (SeqVerdict.NEW_SOURCE, 0)
    assert seq.gaps == 3


def test_topics() -> None:
    assert topics.root_of("frames.h1") == "frames"
    assert topics.root_of("traffic.matrix") == "traffic.matrix"
    assert topics.root_of("control.migrate") == "control.migrate"
    assert topics.root_of("whatever") is None
    assert topics.is_control("desired.h1") and topics.is_control("plan")
    assert not topics.is_control("planner.x") and not topics.is_control("frames.h1")
    assert topics.exact("frames.h1", "frames.h1") and not topics.exact("frames.h10", "frames.h1")
    with pytest.raises(ValueError, match="must be non-empty"):
        topics.join("frames", "a.b")


@pytest.mark.parametrize("kind", PAYLOAD_FIELDS)
def test_fast_encoder_bytes_parse_as_the_reference_encoding(kind: str) -> None:
    topic, payload = SAMPLES[kind]
    fast = envelope.Encoder("svc@h", 2**63 + 5)
    for seq, ts in ((1, 0.0), (300, 1234.5), (2**40, -1.0)):
        raw_topic, body = fast.encode(topic, seq, ts, payload)
        reference = envelope.encode(topic, "svc@h", 2**63 + 5, seq, ts, payload)
        # Sizes may differ: the fast path writes seq and ts even when zero.
        assert envelope.decode([raw_topic, body])._replace(size=0) == envelope.decode(
            reference)._replace(size=0)
        a, b = pb.Envelope(), pb.Envelope()
        a.ParseFromString(body)
        b.ParseFromString(reference[1])
        assert a == b


def test_fast_encoder_checks_topic_and_payload() -> None:
    with pytest.raises(TypeError, match="carries heartbeat"):
        envelope.Encoder("s@h", 1).encode("heartbeat.x", 1, 0.0, pb.Plan())
    with pytest.raises(TypeError, match="carries frame_counts"):
        envelope.Encoder("s@h", 1).encode_wire("frames.h1", "plan", 1, 0.0, b"")
    with pytest.raises(TypeError, match="not an Envelope payload"):
        envelope.Encoder("s@h", 1).encode_wire("frames.h1", "no_such_field", 1, 0.0, b"")


@pytest.mark.parametrize("kind", PAYLOAD_FIELDS)
def test_a_payload_in_wire_form_encodes_as_the_message_would(kind: str) -> None:
    topic, payload = SAMPLES[kind]
    enc = envelope.Encoder("svc@h", 9)
    assert enc.encode_wire(topic, kind, 7, 1.5, payload.SerializeToString()) == enc.encode(
        topic, 7, 1.5, payload)
