"""Patterns on the wire: a hello naming the connecting rank, then framed messages.

One TCP connection per topology edge; the higher rank connects to the lower
and opens with HELLO (magic, its rank). Each message is HEADER (iteration,
payload length) plus that many payload bytes, which the receiver counts and
throws away. A connection that ends between messages is a peer that finished;
one that ends inside a message is an error.
"""

from __future__ import annotations

import struct

MAGIC = b"PTN1"
HELLO = struct.Struct("!4sI")   # magic, the connecting worker's rank
HEADER = struct.Struct("!II")   # iteration (mod 2**32), payload bytes


class WireError(ValueError):
    """Bytes that are not the Patterns protocol."""


def hello(rank: int) -> bytes:
    return HELLO.pack(MAGIC, rank)


def parse_hello(data: bytes) -> int:
    """The rank in a HELLO, or WireError."""
    if len(data) != HELLO.size:
        raise WireError(f"hello of {len(data)} bytes, expected {HELLO.size}")
    magic, rank = HELLO.unpack(data)
    if magic != MAGIC:
        raise WireError(f"hello starts with {magic!r}, not {MAGIC!r}: not a Patterns worker")
    return int(rank)


def header(iteration: int, payload_bytes: int) -> bytes:
    return HEADER.pack(iteration % (1 << 32), payload_bytes)


class StreamParser:
    """Splits one connection's byte stream into messages without keeping payloads."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._payload_left = 0
        self._iteration = 0

    @property
    def at_boundary(self) -> bool:
        """No message half-read: an end of stream here is a clean finish."""
        return not self._head and not self._payload_left

    def feed(self, data: bytes | bytearray | memoryview) -> list[int]:
        """The iterations of the messages data completes, in order."""
        done: list[int] = []
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self._payload_left:
                take = min(self._payload_left, end - pos)
                self._payload_left -= take
                pos += take
                if not self._payload_left:
                    done.append(self._iteration)
                continue
            take = min(HEADER.size - len(self._head), end - pos)
            self._head += view[pos:pos + take]
            pos += take
            if len(self._head) == HEADER.size:
                self._iteration, self._payload_left = HEADER.unpack(self._head)
                self._head.clear()
                if not self._payload_left:
                    done.append(self._iteration)
        return done
