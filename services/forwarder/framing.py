"""Wire formats of overlay links and of QEMU's stream netdev (pure, no sockets).

Overlay link messages: on TCP/TLS a 4-byte big-endian length (of what
follows), then a 1-byte type and the body; on UDP one message per datagram,
the type byte and the body. FRAME bodies are vframes (vnet header + frame),
so a 64 KB GSO frame crosses a link as one message.

QEMU's stream netdev: a 4-byte big-endian length, then the plain frame.

A stream that breaks the format (a length over the limit, an unknown type)
cannot be resynchronised: the decoder raises :class:`BadStream` and the
shell closes that connection, counting it; other links are untouched.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import cast

from services.forwarder.ethernet import ETH_HDR_LEN, MAX_GSO_FRAME, VNET_HDR_LEN, mac_from_str

_LEN = struct.Struct("!I")
_PING = struct.Struct("!Qd")
MAX_LINK_MESSAGE = 1 + VNET_HDR_LEN + MAX_GSO_FRAME
MAX_CONTROL_BODY = 64 * 1024


class MsgType(IntEnum):
    HELLO = 1    # dialer -> acceptor: who I am and which link this is
    WELCOME = 2  # acceptor -> dialer: accepted
    REFUSE = 3   # acceptor -> dialer: refused, body is the reason
    PING = 4     # keepalive: seq, sender's monotonic time
    PONG = 5     # echo of a PING, for RTT
    FRAME = 6    # a vframe
    ANNOUNCE = 7  # star dialer -> proxy: the guest MACs live here now (after a move)
    FRAGMENT = 8  # UDP links: one piece of a vframe too large for a datagram (fragments.py)


MESSAGE_TYPES = frozenset(int(t) for t in MsgType)
_FRAME = int(MsgType.FRAME)
_FRAGMENT = int(MsgType.FRAGMENT)


class BadStream(ValueError):
    """The byte stream broke the format; reason names the counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Hello:
    """The dialer's introduction: the acceptor checks host against its members."""

    host: str
    link_id: str
    fast_path: bool
    guest_macs: tuple[str, ...] = ()

    def encode(self) -> bytes:
        for name, value in (("host", self.host), ("link_id", self.link_id)):
            if not value or any(c in value for c in "\n,"):
                raise ValueError(f"hello {name} {value!r} must be non-empty without ',' or newline")
        return "\n".join(
            ("vnet1", self.host, self.link_id, "1" if self.fast_path else "0",
             ",".join(self.guest_macs))
        ).encode()

    @staticmethod
    def decode(body: bytes) -> Hello:
        try:
            text = body.decode()
        except UnicodeDecodeError:
            raise BadStream("bad_hello", "hello is not UTF-8") from None
        parts = text.split("\n")
        if len(parts) != 5 or parts[0] != "vnet1":
            raise BadStream("bad_hello", f"hello {text[:80]!r} is not 'vnet1' and four fields")
        _, host, link_id, fast, macs = parts
        if not host or not link_id or fast not in ("0", "1"):
            raise BadStream("bad_hello", f"hello {text[:80]!r} has an empty or bad field")
        return Hello(host, link_id, fast == "1", tuple(m for m in macs.split(",") if m))


def announce_body(macs: tuple[str, ...]) -> bytes:
    return ",".join(macs).encode()


def parse_announce(body: bytes) -> tuple[str, ...]:
    """The MACs of an ANNOUNCE; malformed ones raise BadStream (the link is closed)."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise BadStream("bad_announce", "announce is not ASCII") from None
    macs = tuple(m for m in text.split(",") if m)
    for mac in macs:
        try:
            mac_from_str(mac)
        except ValueError as exc:
            raise BadStream("bad_announce", str(exc)) from None
    return macs


def encode(kind: MsgType, body: bytes = b"") -> bytes:
    """One stream message (length-prefixed)."""
    return _LEN.pack(1 + len(body)) + bytes((kind,)) + body


def frame_header(vframe_len: int) -> bytes:
    """The 5 bytes before a vframe on a stream (saves joining the frame)."""
    return _LEN.pack(1 + vframe_len) + b"\x06"


def datagram(kind: MsgType, body: bytes = b"") -> bytes:
    return bytes((kind,)) + body


def ping_body(seq: int, sent: float) -> bytes:
    return _PING.pack(seq, sent)


def parse_ping(body: bytes) -> tuple[int, float]:
    if len(body) != _PING.size:
        raise BadStream("bad_ping", f"ping body is {len(body)} bytes, expected {_PING.size}")
    seq, sent = _PING.unpack(body)
    return int(seq), float(sent)


class StreamDecoder:
    """Splits a link byte stream into (type, body) messages.

    Keeps at most one partial message; :attr:`pending` tells the shell that
    a peer stopped half-way (a stall) so it can time the connection out.
    """

    def __init__(self, max_message: int = MAX_LINK_MESSAGE) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._pos = 0  # start of the unparsed bytes in _buf

    @property
    def pending(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes | memoryview) -> list[tuple[int, bytes]]:
        """Append data and return the complete messages (tests, small streams)."""
        buf = self._buf
        buf += data
        out, pos = self.parse(buf, self._pos, len(buf))
        if pos == len(buf):
            buf.clear()
            pos = 0
        elif pos > (1 << 20):
            del buf[:pos]
            pos = 0
        self._pos = pos
        return out

    def parse(self, buf: bytearray, pos: int, end: int, *, copy_frames: bool = True,
              ) -> tuple[list[tuple[int, bytes]], int]:
        """Complete messages in buf[pos:end] and where the unparsed rest starts.

        buf itself is left alone, so the caller can receive straight into a
        preallocated buffer (BufferedProtocol). Control bodies are copied out;
        with copy_frames=False a FRAME body is a read-only view into buf (no
        64 KB copy per frame), valid only until the caller reuses buf: the
        forwarder sends each frame before it returns to its loop.
        """
        out: list[tuple[int, bytes]] = []
        limit = self.max_message
        view = memoryview(buf) if copy_frames else memoryview(buf).toreadonly()
        try:
            while end - pos >= 5:
                (n,) = _LEN.unpack_from(view, pos)
                kind = view[pos + 4]
                if n == 0 or n > limit:
                    raise BadStream("bad_length", f"message length {n} outside 1..{limit}")
                if kind not in MESSAGE_TYPES:
                    raise BadStream("bad_type", f"message type {kind} is unknown")
                if kind != _FRAME and n > MAX_CONTROL_BODY:
                    raise BadStream("bad_length", f"control message of {n} bytes")
                if end - pos < 4 + n:
                    break
                body = view[pos + 5 : pos + 4 + n]
                # A read-only view sends and compares like the bytes it shows.
                out.append((kind, cast(bytes, body) if kind == _FRAME and not copy_frames
                            else body.tobytes()))
                pos += 4 + n
        finally:
            if copy_frames:
                view.release()
        return out, pos


def decode_datagram(data: bytes) -> tuple[int, bytes]:
    if not data:
        raise BadStream("bad_datagram", "empty datagram")
    kind = data[0]
    if kind not in MESSAGE_TYPES:
        raise BadStream("bad_type", f"datagram type {kind} is unknown")
    if kind in (_FRAME, _FRAGMENT):  # a view, not a copy (bytes are immutable)
        return kind, cast(bytes, memoryview(data)[1:])
    return kind, data[1:]


class QemuDecoder:
    """Splits QEMU's stream netdev bytes into plain frames.

    A length over the limit desynchronises the stream (BadStream); a
    too-short frame with a sane length is returned so the caller can count
    it as a runt and carry on.
    """

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (n,) = _LEN.unpack_from(buf, pos)
            if n > self.max_frame:
                raise BadStream("bad_length", f"QEMU frame length {n} over {self.max_frame}")
            if end - pos < 4 + n:
                break
            out.append(bytes(buf[pos + 4 : pos + 4 + n]))
            pos += 4 + n
        if pos:
            del buf[:pos]
        return out


def qemu_encode(frame: bytes) -> bytes:
    return _LEN.pack(len(frame)) + frame


MIN_QEMU_FRAME = ETH_HDR_LEN
# A length beyond any frame QEMU can send means the stream is desynchronised;
# a frame merely over the guest MTU is read whole and dropped as oversized.
MAX_QEMU_LENGTH = MAX_GSO_FRAME
