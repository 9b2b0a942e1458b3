"""A vframe too large for one datagram, cut into FRAGMENT datagrams and joined again (pure).

On UDP links a 64 KB GSO frame used to ride as one datagram that the
underlay's IP layer fragmented, and one over 65,507 bytes could not be sent
at all. Now the forwarder cuts it itself into datagrams that fit the path:
each is the FRAGMENT type byte, then frame id (4 bytes), index and count
(2 bytes each, big-endian), then the piece. All but the last are the same
size, so the pieces go out in one system call with UDP_SEGMENT (the kernel
makes the datagrams, or hands the whole batch over a veth untouched), and a
receiver with UDP_GRO reads a batch in one call too.

Reassembly is per peer and in order, one frame at a time: datagrams between
two forwarders follow one path, and a piece lost (or out of order) loses its
frame, as a lost IP fragment would; the frame's sender retransmits if it is
TCP. A malformed piece makes feed() raise BadStream; feed_batch() skips it
and counts it.
"""

from __future__ import annotations

import struct

import numpy as np

from services.forwarder.framing import BadStream, MsgType

_HEADER = struct.Struct("!IHH")  # frame id, index, count
HEADER_LEN = 1 + _HEADER.size
MAX_PIECES = 64  # the kernel's UDP_MAX_SEGMENTS on older kernels (128 since 6.x)
_KIND = bytes((MsgType.FRAGMENT,))


Piece = bytes | memoryview


def datagrams(frame_id: int, vframe: Piece, datagram_max: int) -> bytes:
    """The FRAGMENT datagrams of one vframe, back to back: one UDP_SEGMENT send's buffer.

    Made with array operations: per piece, Python costs about a microsecond, and a
    64 KB frame is 45 pieces."""
    room = datagram_max - HEADER_LEN
    count = _count(len(vframe), room)
    full, rest = divmod(len(vframe), room)
    out = np.empty((count, datagram_max), np.uint8)
    out[:, 0] = MsgType.FRAGMENT
    out[:, 1:5] = np.frombuffer(frame_id.to_bytes(4, "big"), np.uint8)
    out[:, 5:7] = np.arange(count, dtype=">u2").view(np.uint8).reshape(count, 2)
    out[:, 7:9] = np.frombuffer(count.to_bytes(2, "big"), np.uint8)
    data = np.frombuffer(vframe, np.uint8)
    out[:full, HEADER_LEN:] = data[: full * room].reshape(full, room)
    if rest:
        out[full, HEADER_LEN: HEADER_LEN + rest] = data[full * room:]
        return out.reshape(-1)[: (count - 1) * datagram_max + HEADER_LEN + rest].tobytes()
    return out.tobytes()


def _count(length: int, room: int) -> int:
    count = -(-length // room)
    if count > MAX_PIECES:
        raise ValueError(f"a {length}-byte frame needs {count} pieces of {room} bytes,"
                         f" more than {MAX_PIECES}")
    return count


class Reassembler:
    """Joins one peer's pieces into vframes; lost counts frames given up."""

    def __init__(self, max_vframe: int) -> None:
        self.max_vframe = max_vframe
        self.lost = 0
        self.bad = 0  # malformed pieces feed_batch skipped
        self.last_bad = ""
        self._id = -1
        self._count = 0
        self._parts: list[Piece] = []
        self._size = 0

    def feed_batch(self, batch: memoryview, size: int) -> list[bytes]:
        """Datagrams of `size` bytes back to back (the last maybe shorter), as UDP_GRO
        hands them over: the vframes they complete. A batch that is exactly one whole
        frame, the rule, is checked and joined with array operations. Malformed pieces
        are skipped and counted in bad (last_bad says why), not raised."""
        n = -(-len(batch) // size)
        full = len(batch) // size
        if n >= 2 and batch[0] == MsgType.FRAGMENT and full >= n - 1:
            rows = np.frombuffer(batch, np.uint8, count=(n - 1) * size).reshape(n - 1, size)
            last = batch[(n - 1) * size:]
            frame_id, index, count = _HEADER.unpack_from(batch, 1)
            if (index == 0 and count == n and len(last) > HEADER_LEN
                    and last[:HEADER_LEN] == _KIND + _HEADER.pack(frame_id, n - 1, n)
                    and (rows[:, 0] == MsgType.FRAGMENT).all()
                    and (rows[:, 1:5] == rows[0, 1:5]).all()
                    and (rows[:, 7:9] == rows[0, 7:9]).all()
                    and (rows[:, 5:7].view(">u2").ravel() == np.arange(n - 1)).all()):
                if self._parts:
                    self.lost += 1
                self._start(frame_id, count)
                if (n - 1) * (size - HEADER_LEN) + len(last) - HEADER_LEN > self.max_vframe:
                    self.bad += 1
                    self.last_bad = f"fragments add up to over {self.max_vframe} bytes"
                    return []
                return [rows[:, HEADER_LEN:].tobytes() + bytes(last[HEADER_LEN:])]
        frames = []
        for start in range(0, len(batch), size):
            piece = batch[start: start + size]
            try:
                if piece[0] != MsgType.FRAGMENT:
                    raise BadStream("bad_fragment", f"a type {piece[0]} datagram among pieces")
                whole = self.feed(piece[1:])
            except BadStream as exc:
                self.bad += 1
                self.last_bad = exc.detail
                continue
            if whole is not None:
                frames.append(whole)
        return frames

    def _start(self, frame_id: int, count: int) -> None:
        self._id, self._count = frame_id, count
        self._parts = []
        self._size = 0

    def feed(self, body: Piece) -> bytes | None:
        """A FRAGMENT datagram's body (after the type byte): the whole vframe once complete."""
        if len(body) <= _HEADER.size:
            raise BadStream("bad_fragment", f"fragment of {len(body)} bytes")
        frame_id, index, count = _HEADER.unpack_from(body)
        if not 2 <= count <= MAX_PIECES or index >= count:
            raise BadStream("bad_fragment", f"piece {index} of {count}")
        if index == 0:
            if self._parts:  # the frame under way will not be completed
                self.lost += 1
            self._start(frame_id, count)
        elif frame_id != self._id or count != self._count or index != len(self._parts):
            if frame_id != self._id or self._parts:  # the first sign of this frame's loss
                self.lost += 1
            self._start(frame_id, count)  # its remaining pieces are dropped quietly
            return None
        piece = memoryview(body)[_HEADER.size:]
        self._size += len(piece)
        if self._size > self.max_vframe:
            self._parts = []
            self._size = 0
            raise BadStream("bad_fragment", f"fragments add up to over {self.max_vframe} bytes")
        self._parts.append(piece)
        if len(self._parts) < count:
            return None
        frame = b"".join(self._parts)
        self._parts = []
        self._size = 0
        return frame
