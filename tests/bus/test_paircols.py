"""Pair records round-trip through the columnar form."""

from __future__ import annotations

from services.bus.paircols import rows_of, to_columns
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
