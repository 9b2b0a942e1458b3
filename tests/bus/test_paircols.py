"""Pair records round-trip through the columnar form."""

from __future__ import annotations

import random

import pytest

from services.bus.paircols import PairRow, frame_counts_wire, rows_of, to_columns
from services.bus.pb import vnet_pb2 as pb

A, B, C = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"


def test_columns_share_one_mac_table_and_read_back_as_rows() -> None:
    rows = [(A, B, 1, 100, 5, 500), (B, A, 2, 200, 6, 600), (A, C, 3, 300, 7, 700)]
    cols = to_columns(rows)
    assert list(cols.macs) == [A, B, C]
    assert list(cols.src) == [0, 1, 0] and list(cols.dst) == [1, 0, 2]
    fc = pb.FrameCounts(host="h1", columns=cols)
    fc.pairs.add(src_mac=C, dst_mac=A, frames=9, bytes=900, total_frames=9, total_bytes=900)
    assert rows_of(fc) == [(C, A, 9, 900, 9, 900), *rows]


def test_empty_rows_make_empty_columns() -> None:
    assert to_columns([]) == pb.PairColumns()


def _random_rows(rng: random.Random, n: int) -> list[PairRow]:
    macs = [f"02:00:00:00:{i // 256:02x}:{i % 256:02x}" for i in range(rng.randint(1, 12))]
    return [(rng.choice(macs), rng.choice(macs), rng.randint(0, 2**20), rng.randint(0, 2**40),
             rng.randint(0, 2**63), rng.randint(0, 2**64 - 1)) for _ in range(n)]


@pytest.mark.parametrize("seed", range(20))
def test_hand_encoded_frame_counts_are_protobufs_own_bytes(seed: int) -> None:
    rng = random.Random(seed)
    rows = _random_rows(rng, rng.choice([0, 1, 2, rng.randint(3, 300)]))
    host = rng.choice(["", "h1", "höst-ü", "x" * 300])
    index = rng.choice([0, 1, 127, 128, 2**64 - 1])
    interval = rng.choice([0.0, 0.05, 1.0, 1e-300])
    wire = frame_counts_wire(host, index, interval, rows)
    reference = pb.FrameCounts(host=host, interval_index=index, interval_s=interval,
                               columns=to_columns(rows))
    assert wire == reference.SerializeToString()
    assert rows_of(pb.FrameCounts.FromString(wire)) == rows
