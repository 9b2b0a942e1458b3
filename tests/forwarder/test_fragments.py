"""FRAGMENT pieces: a vframe too large for one datagram, cut and joined again."""

from __future__ import annotations

import os

import pytest

from services.forwarder import fragments
from services.forwarder.framing import BadStream, MsgType, decode_datagram

MAX = 10 + 65_550


def datagrams(frame_id: int, vframe: bytes, size: int) -> list[bytes]:
    parts = fragments.pieces(frame_id, vframe, size)
    return [bytes(parts[i]) + bytes(parts[i + 1]) for i in range(0, len(parts), 2)]


def bodies(frame_id: int, vframe: bytes, size: int) -> list[bytes]:
    out = []
    for d in datagrams(frame_id, vframe, size):
        kind, body = decode_datagram(d)
        assert kind == MsgType.FRAGMENT
        out.append(bytes(body))
    return out


@pytest.mark.parametrize("length", [1_473, 9_024, 65_546])
def test_pieces_fit_the_datagram_and_join_to_the_frame(length: int) -> None:
    vframe = os.urandom(length)
    sent = datagrams(7, vframe, 1472)
    assert all(len(d) == 1472 for d in sent[:-1]) and 0 < len(sent[-1]) <= 1472
    r = fragments.Reassembler(MAX)
    got = [r.feed(b) for b in bodies(7, vframe, 1472)]
    assert got[:-1] == [None] * (len(sent) - 1) and got[-1] == vframe and r.lost == 0


def test_a_missing_piece_loses_that_frame_only() -> None:
    first, second = os.urandom(5_000), os.urandom(5_000)
    r = fragments.Reassembler(MAX)
    pieces = bodies(1, first, 1472)
    for b in pieces[:1] + pieces[2:]:  # piece 1 lost
        assert r.feed(b) is None
    assert r.lost == 1
    out = [r.feed(b) for b in bodies(2, second, 1472)]
    assert out[-1] == second and r.lost == 1


def test_a_frame_cut_short_by_the_next_one_is_counted_lost() -> None:
    r = fragments.Reassembler(MAX)
    assert r.feed(bodies(1, os.urandom(3_000), 1472)[0]) is None
    whole = os.urandom(3_000)
    assert [r.feed(b) for b in bodies(2, whole, 1472)][-1] == whole
    assert r.lost == 1


@pytest.mark.parametrize("body", [b"", b"\x00" * 8, (1).to_bytes(4, "big") + b"\x00\x05\x00\x03x",
                                  (1).to_bytes(4, "big") + b"\x00\x00\x00\x01x",
                                  (1).to_bytes(4, "big") + b"\x00\x00\x01\x00x"])
def test_malformed_pieces_raise(body: bytes) -> None:
    with pytest.raises(BadStream) as exc:
        fragments.Reassembler(MAX).feed(body)
    assert exc.value.reason == "bad_fragment"


def test_pieces_adding_up_past_the_limit_raise() -> None:
    r = fragments.Reassembler(2_000)
    parts = bodies(1, os.urandom(3_000), 1200)
    assert r.feed(parts[0]) is None
    with pytest.raises(BadStream):
        r.feed(parts[1])


def test_a_frame_needing_too_many_pieces_is_refused() -> None:
    with pytest.raises(ValueError):
        fragments.pieces(1, bytes(65 * 1000), 1000 + fragments.HEADER_LEN)
