"""Build FrameCounts' columnar pair records (PairColumns) from rows.

Forwarders count per (src MAC, dst MAC); this packs those rows into the
columns readers decode straight into numpy (see PairColumns in vnet.proto).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from services.bus import wire
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


def frame_counts_wire(host: str, interval_index: int, interval_s: float,
                      rows: Sequence[PairRow]) -> bytes:
    """FrameCounts(host, interval_index, interval_s, columns=to_columns(rows)), serialised.

    The same bytes as protobuf makes for that message (a test holds them
    equal), without building it: forwarders send one at up to 20 Hz.
    """
    index: dict[str, int] = {}
    for s, d, *_ in rows:
        index.setdefault(s, len(index))
        index.setdefault(d, len(index))
    columns = b"".join((
        *(wire.length_delimited(1, mac.encode()) for mac in index),
        wire.packed_varints(2, [index[r[0]] for r in rows]),
        wire.packed_varints(3, [index[r[1]] for r in rows]),
        wire.packed_varints(4, [r[2] for r in rows]),
        wire.packed_varints(5, [r[3] for r in rows]),
        wire.packed_varints(6, [r[4] for r in rows]),
        wire.packed_varints(7, [r[5] for r in rows]),
    ))
    return b"".join((
        wire.length_delimited(1, host.encode()) if host else b"",
        wire.tag(2, wire.VARINT) + wire.varint(interval_index) if interval_index else b"",
        wire.tag(3, wire.FIXED64) + wire.DOUBLE.pack(interval_s) if interval_s else b"",
        wire.length_delimited(5, columns),
    ))


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
