"""Build and check bus envelopes: the one place the wire form is handled.

Receivers check in a fixed order: frame count and size, parse, schema
version, then meaning (a source, a payload, the payload the topic demands).
Each failure raises :class:`BadMessage` whose ``reason`` names a counter.
"""

from __future__ import annotations

from typing import NamedTuple

from google.protobuf.message import DecodeError, Message

from services.bus import topics, wire
from services.bus.pb import vnet_pb2 as pb

SCHEMA_VERSION = 1
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20

_PAYLOAD_FIELDS = {
    f.message_type.full_name: f.name
    for f in pb.Envelope.DESCRIPTOR.oneofs_by_name["payload"].fields
    if f.message_type is not None
}


_TOPIC_CACHE_LIMIT = 1024


def _tag(field: str, wire_type: int) -> bytes:
    return wire.tag(pb.Envelope.DESCRIPTOR.fields_by_name[field].number, wire_type)


_SEQ_TAG = _tag("seq", wire.VARINT)
_TS_TAG = _tag("ts", wire.FIXED64)
_PAYLOAD_TAGS = {name: _tag(name, wire.LENGTH) for name in _PAYLOAD_FIELDS.values()}


class BadMessage(ValueError):
    """A message from the bus that must be dropped; reason is a counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BusMessage(NamedTuple):
    """A checked message: the topic, who sent it and its payload.

    A NamedTuple rather than a frozen dataclass: built once per received
    message, and a frozen dataclass's __init__ costs several times more.
    """

    topic: str
    source: str
    instance: int
    seq: int
    ts: float
    kind: str  # the Envelope payload field, e.g. "heartbeat"
    payload: Message
    size: int


_FIELD_BY_TYPE: dict[type, str] = {}


def payload_field(payload: Message) -> str:
    """The Envelope oneof field that carries this payload type."""
    field = _FIELD_BY_TYPE.get(type(payload))
    if field is None:
        try:
            field = _FIELD_BY_TYPE[type(payload)] = _PAYLOAD_FIELDS[payload.DESCRIPTOR.full_name]
        except KeyError:
            raise TypeError(f"{payload.DESCRIPTOR.full_name} is not a bus payload") from None
    return field


def encode(
    topic: str, source: str, instance: int, seq: int, ts: float, payload: Message
) -> list[bytes]:
    """The two ZeroMQ frames [topic, envelope] for one message."""
    root = topics.root_of(topic)
    field = payload_field(payload)
    if root is not None and topics.PAYLOAD_FOR_ROOT[root] != field:
        raise TypeError(f"topic {topic!r} carries {topics.PAYLOAD_FOR_ROOT[root]}, not {field}")
    env = pb.Envelope(
        schema_version=SCHEMA_VERSION, source=source, instance=instance, seq=seq, ts=ts
    )
    getattr(env, field).CopyFrom(payload)
    return [topic.encode(), env.SerializeToString()]


class Encoder:
    """One source's fast encoder: the constant header is serialised once.

    Protobuf accepts fields in any order, so an envelope is the header's
    bytes, then seq, ts and the payload appended by hand; the bytes parse
    exactly as :func:`encode`'s do (a test holds them to that).
    """

    def __init__(self, source: str, instance: int) -> None:
        self._head = pb.Envelope(
            schema_version=SCHEMA_VERSION, source=source, instance=instance
        ).SerializeToString()
        self._topics: dict[tuple[str, str], bytes] = {}

    def _topic(self, topic: str, field: str) -> bytes:
        raw = self._topics.get((topic, field))
        if raw is None:
            root = topics.root_of(topic)
            if root is not None and topics.PAYLOAD_FOR_ROOT[root] != field:
                raise TypeError(
                    f"topic {topic!r} carries {topics.PAYLOAD_FOR_ROOT[root]}, not {field}"
                )
            if len(self._topics) >= _TOPIC_CACHE_LIMIT:
                self._topics.clear()
            raw = self._topics[(topic, field)] = topic.encode()
        return raw

    def encode(self, topic: str, seq: int, ts: float, payload: Message) -> tuple[bytes, bytes]:
        return self.encode_wire(topic, payload_field(payload), seq, ts,
                                payload.SerializeToString())

    def encode_wire(self, topic: str, field: str, seq: int, ts: float,
                    body: bytes) -> tuple[bytes, bytes]:
        """As encode, for a payload already in wire form; field is its Envelope field."""
        if field not in _PAYLOAD_TAGS:
            raise TypeError(f"{field!r} is not an Envelope payload field")
        return self._topic(topic, field), b"".join((
            self._head, _SEQ_TAG, wire.varint(seq), _TS_TAG, wire.DOUBLE.pack(ts),
            _PAYLOAD_TAGS[field], wire.varint(len(body)), body,
        ))


def decode(frames: list[bytes], max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> BusMessage:
    """Check and parse [topic, envelope]; raise BadMessage on any fault."""
    if len(frames) != 2:
        raise BadMessage("bad_frames", f"expected 2 frames [topic, envelope], got {len(frames)}")
    raw_topic, body = frames
    size = len(raw_topic) + len(body)
    if size > max_bytes:
        raise BadMessage("oversized", f"{size} bytes exceeds the limit of {max_bytes}")
    try:
        topic = raw_topic.decode()
    except UnicodeDecodeError:
        raise BadMessage("bad_topic", f"topic is not UTF-8: {raw_topic[:40]!r}") from None
    env = pb.Envelope()
    try:
        env.ParseFromString(body)
    except DecodeError as exc:
        raise BadMessage("unparsable", f"topic {topic!r}: {exc}") from None
    if env.schema_version != SCHEMA_VERSION:
        raise BadMessage(
            "wrong_version",
            f"topic {topic!r} from {env.source!r}: schema version {env.schema_version},"
            f" this build speaks {SCHEMA_VERSION}",
        )
    kind = env.WhichOneof("payload")
    if kind is None:
        raise BadMessage("no_payload", f"topic {topic!r} from {env.source!r}: empty payload")
    if not env.source or env.seq == 0:
        raise BadMessage("no_source", f"topic {topic!r}: missing source or sequence number")
    root = topics.root_of(topic)
    if root is not None and topics.PAYLOAD_FOR_ROOT[root] != kind:
        raise BadMessage(
            "wrong_payload",
            f"topic {topic!r} from {env.source!r} carries {kind},"
            f" expected {topics.PAYLOAD_FOR_ROOT[root]}",
        )
    payload = getattr(env, kind)
    return BusMessage(topic, env.source, env.instance, env.seq, env.ts, kind, payload, size)
