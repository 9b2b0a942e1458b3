"""FRAGMENT pieces: a vframe too large for one datagram, cut and joined again."""

from __future__ import annotations

import os

import pytest

from services.forwarder import fragments
from services.forwarder.framing import BadStream, MsgType, decode_datagram

MAX = 10 + 65_550


def split(frame_id: int, vframe: bytes, size: int) -> list[bytes]:
    buffer = fragments.datagrams(frame_id, vframe, size)
    return [buffer[i: i + size] for i in range(0, len(buffer), size)]


def bodies(frame_id: int, vframe: bytes, size: int) -> list[bytes]:
    out = []
    for d in split(frame_id, vframe, size):
        kind, body = decode_datagram(d)
        assert kind == MsgType.FRAGMENT
        out.append(bytes(body))
    return out


@pytest.mark.parametrize("length", [1_473, 9_024, 65_546, 1_463 * 3])
def test_pieces_fit_the_datagram_and_join_to_the_frame(length: int) -> None:
    vframe = os.urandom(length)
    sent = split(7, vframe, 1472)
    assert all(len(d) == 1472 for d in sent[:-1]) and 0 < len(sent[-1]) <= 1472
    assert [d[:9] for d in sent] == [bytes([MsgType.FRAGMENT]) + (7).to_bytes(4, "big")
                                     + i.to_bytes(2, "big") + len(sent).to_bytes(2, "big")
                                     for i in range(len(sent))]
    r = fragments.Reassembler(MAX)
    got = [r.feed(b) for b in bodies(7, vframe, 1472)]
    assert got[:-1] == [None] * (len(sent) - 1) and got[-1] == vframe and r.lost == 0
    # The same pieces as one coalesced batch (UDP_GRO): joined in one go.
    batch = fragments.Reassembler(MAX)
    assert batch.feed_batch(memoryview(fragments.datagrams(8, vframe, 1472)), 1472) == [vframe]
    assert batch.lost == batch.bad == 0


def test_a_missing_piece_loses_that_frame_only() -> None:
    first, second = os.urandom(5_000), os.urandom(5_000)
    r = fragments.Reassembler(MAX)
    pieces = bodies(1, first, 1472)
    for b in pieces[:1] + pieces[2:]:  # piece 1 lost
        assert r.feed(b) is None
    assert r.lost == 1
    out = [r.feed(b) for b in bodies(2, second, 1472)]
    assert out[-1] == second and r.lost == 1


def test_a_batch_with_a_hole_loses_its_frame_and_the_next_batch_arrives() -> None:
    first, second = os.urandom(9_000), os.urandom(9_000)
    held = split(1, first, 1472)
    r = fragments.Reassembler(MAX)
    assert r.feed_batch(memoryview(b"".join(held[:2] + held[3:])), 1472) == []
    assert r.lost == 1
    assert r.feed_batch(memoryview(fragments.datagrams(2, second, 1472)), 1472) == [second]


def test_a_frame_cut_short_by_the_next_one_is_counted_lost() -> None:
    r = fragments.Reassembler(MAX)
    assert r.feed(bodies(1, os.urandom(3_000), 1472)[0]) is None
    whole = os.urandom(3_000)
    assert r.feed_batch(memoryview(fragments.datagrams(2, whole, 1472)), 1472) == [whole]
    assert r.lost == 1


@pytest.mark.parametrize("body", [b"", b"\x00" * 8, (1).to_bytes(4, "big") + b"\x00\x05\x00\x03x",
                                  (1).to_bytes(4, "big") + b"\x00\x00\x00\x01x",
                                  (1).to_bytes(4, "big") + b"\x00\x00\x01\x00x"])
def test_malformed_pieces_raise(body: bytes) -> None:
    with pytest.raises(BadStream) as exc:
        fragments.Reassembler(MAX).feed(body)
    assert exc.value.reason == "bad_fragment"


def test_malformed_pieces_in_a_batch_are_skipped_and_counted() -> None:
    good = os.urandom(2_000)
    sent = split(3, good, 1472)
    junk = bytes([MsgType.FRAME]) + bytes(1471)
    r = fragments.Reassembler(MAX)
    assert r.feed_batch(memoryview(junk + sent[0] + sent[1]), 1472) == [good]
    assert r.bad == 1 and "type" in r.last_bad


def test_pieces_adding_up_past_the_limit_are_refused() -> None:
    r = fragments.Reassembler(2_000)
    parts = bodies(1, os.urandom(3_000), 1200)
    assert r.feed(parts[0]) is None
    with pytest.raises(BadStream):
        r.feed(parts[1])
    batch = fragments.Reassembler(2_000)
    assert batch.feed_batch(memoryview(fragments.datagrams(2, os.urandom(3_000), 1200)),
                            1200) == []
    assert batch.bad == 1


def test_a_frame_needing_too_many_pieces_is_refused() -> None:
    with pytest.raises(ValueError):
        fragments.datagrams(1, bytes(65 * 1000), 1000 + fragments.HEADER_LEN)
