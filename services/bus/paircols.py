"""Build FrameCounts' columnar pair records (PairColumns) from rows.

Forwarders count per (src MAC, dst MAC); this packs those rows into the
columns readers decode straight into numpy (see PairColumns in vnet.proto).
"""

from __future__ import annotations

from collections.abc import Iterable

from services.bus.pb import vnet_pb2 as pb

# (src MAC, dst MAC, frames, bytes, total frames, total bytes)
PairRow = tuple[str, str, int, int, int, int]


def to_columns(rows: Iterable[PairRow]) -> pb.PairColumns:
    index: dict[str, int] = {}
    src: list[int] = []
    dst: list[int] = []
    frames: list[int] = []
    nbytes: list[int] = []
    total_frames: list[int] = []
    total_bytes: list[int] = []
    for s, d, f, b, tf, tb in rows:
        src.append(index.setdefault(s, len(index)))
        dst.append(index.setdefault(d, len(index)))
        frames.append(f)
        nbytes.append(b)
        total_frames.append(tf)
        total_bytes.append(tb)
    return pb.PairColumns(
        macs=list(index), src=src, dst=dst, frames=frames, bytes=nbytes,
        total_frames=total_frames, total_bytes=total_bytes,
    )


def rows_of(counts: pb.FrameCounts) -> list[PairRow]:
    """Every record of a FrameCounts, from both forms, as rows."""
    out: list[PairRow] = [
        (p.src_mac, p.dst_mac, p.frames, p.bytes, p.total_frames, p.total_bytes)
        for p in counts.pairs
    ]
    c = counts.columns
    out += [
        (c.macs[s], c.macs[d], f, b, tf, tb)
        for s, d, f, b, tf, tb in zip(
            c.src, c.dst, c.frames, c.bytes, c.total_frames, c.total_bytes, strict=True
        )
    ]
    return out
