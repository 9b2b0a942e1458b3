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
TCP. Malformed pieces raise BadStream.
"""

from __future__ import annotations

import struct

from services.forwarder.framing import BadStream, MsgType

_HEADER = struct.Struct("!IHH")  # frame id, index, count
HEADER_LEN = 1 + _HEADER.size
MAX_PIECES = 64  # the kernel's UDP_MAX_SEGMENTS on older kernels (128 since 6.x)
_KIND = bytes((MsgType.FRAGMENT,))


Piece = bytes | memoryview


def pieces(frame_id: int, vframe: Piece, datagram_max: int) -> list[Piece]:
    """The datagrams of one vframe, header and piece alternating (join them to send)."""
    room = datagram_max - HEADER_LEN
    count = -(-len(vframe) // room)
    if count > MAX_PIECES:
        raise ValueError(f"a {len(vframe)}-byte frame needs {count} pieces of {room} bytes,"
                         f" more than {MAX_PIECES}")
    view = memoryview(vframe)
    out: list[Piece] = []
    for i in range(count):
        out.append(_KIND + _HEADER.pack(frame_id, i, count))
        out.append(view[i * room: (i + 1) * room])
    return out


class Reassembler:
    """Joins one peer's pieces into vframes; lost counts frames given up."""

    def __init__(self, max_vframe: int) -> None:
        self.max_vframe = max_vframe
        self.lost = 0
        self._id = -1
        self._count = 0
        self._parts: list[Piece] = []
        self._size = 0

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
