"""The pair records of many FrameCounts at once, as numpy columns of guest codes.

A run of counts (everything one pipeline update takes in) becomes one set of
columns, so checking, classifying and filtering its records costs a few
numpy calls for the whole run rather than a few per message. Both forms are
read: PairColumns (what forwarders send: each packed array goes to numpy
whole, in one concatenation per column for the run) and PairCount records
(tools and tests). A MAC string is looked up once per message that names
it, not once per record.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt

from services.bus.pb import vnet_pb2 as pb
from services.inference.window import IndexArray

_NONE: IndexArray = np.zeros(0, dtype=np.intp)
Codes = Callable[[Sequence[str]], IndexArray]


@dataclass(frozen=True)
class Records:
    """Every readable record of a run, in message order."""

    src: IndexArray  # guest index, or GROUP / UNKNOWN / MALFORMED (guests.py)
    dst: IndexArray
    bytes: npt.NDArray[Any]  # uint64 as the columns carry them (float64 from records)
    total_bytes: npt.NDArray[Any]
    item: IndexArray  # the position in the run of the FrameCounts it came in
    # For naming records in errors: where each part (one form of one message)
    # starts, its MAC list, and each record's MAC positions in it.
    starts: list[int]
    macs: list[Sequence[str]]
    smac: IndexArray
    dmac: IndexArray

    def names(self, k: int) -> tuple[str, str]:
        macs = self.macs[bisect.bisect_right(self.starts, k) - 1]
        return macs[int(self.smac[k])], macs[int(self.dmac[k])]


@dataclass(frozen=True)
class Dropped:
    """Pair columns of one message that cannot be read, so none of them count."""

    item: int
    records: int
    why: str


class _Parts:
    """The run's columns as they are collected, one part per form per message."""

    def __init__(self) -> None:
        # Packed protobuf arrays or numpy arrays: np.concatenate takes both.
        self.src: list[Any] = []
        self.dst: list[Any] = []
        self.nbytes: list[Any] = []
        self.totals: list[Any] = []
        self.macs: list[Sequence[str]] = []
        self.item: list[int] = []
        self.size: list[int] = []

    def add(self, item: int, size: int, macs: Sequence[str],
            columns: tuple[Any, Any, Any, Any]) -> None:
        self.item.append(item)
        self.size.append(size)
        self.macs.append(macs)
        self.src.append(columns[0])
        self.dst.append(columns[1])
        self.nbytes.append(columns[2])
        self.totals.append(columns[3])

    def without(self, bad: set[int]) -> _Parts:
        out = _Parts()
        for j in range(len(self.size)):
            if j not in bad:
                out.add(self.item[j], self.size[j], self.macs[j],
                        (self.src[j], self.dst[j], self.nbytes[j], self.totals[j]))
        return out


def gather(counts: Sequence[pb.FrameCounts], codes: Codes) -> tuple[Records, list[Dropped]]:
    """The records of counts (already checked for host and interval) and what was dropped."""
    parts = _Parts()
    dropped: list[Dropped] = []
    for k, fc in enumerate(counts):
        if fc.pairs:
            macs = [r.src_mac for r in fc.pairs] + [r.dst_mac for r in fc.pairs]
            m = len(fc.pairs)
            idx = np.arange(m, dtype=np.intp)
            parts.add(k, m, macs, (
                idx, idx + m,
                np.array([r.bytes for r in fc.pairs], dtype=np.float64),
                np.array([r.total_bytes for r in fc.pairs], dtype=np.float64),
            ))
        cols = fc.columns
        n = len(cols.src)
        if not n:
            continue
        if len(cols.dst) != n or len(cols.bytes) != n or len(cols.total_bytes) != n:
            lengths = {len(cols.dst), len(cols.bytes), len(cols.total_bytes)}
            dropped.append(Dropped(k, n, _disagree(n, lengths, len(cols.macs))))
            continue
        parts.add(k, n, cols.macs, (cols.src, cols.dst, cols.bytes, cols.total_bytes))
    if not parts.size:
        return Records(_NONE, _NONE, np.zeros(0), np.zeros(0), _NONE, [], [], _NONE, _NONE), \
            dropped
    src, dst = np.concatenate(parts.src), np.concatenate(parts.dst)
    starts = np.cumsum([0, *parts.size[:-1]])
    # A MAC index past its message's table: its columns are unreadable.
    n_macs = np.array([len(m) for m in parts.macs])
    worst = np.maximum(np.maximum.reduceat(src, starts), np.maximum.reduceat(dst, starts))
    bad = set(np.flatnonzero(worst >= n_macs).tolist())
    if bad:
        for j in sorted(bad):
            n = parts.size[j]
            dropped.append(Dropped(parts.item[j], n, _disagree(n, {n}, len(parts.macs[j]))))
        parts = parts.without(bad)
        if not parts.size:
            return gather([], codes)[0], dropped
        src, dst = np.concatenate(parts.src), np.concatenate(parts.dst)
        starts = np.cumsum([0, *parts.size[:-1]])
    size = np.array(parts.size, dtype=np.intp)
    base = np.repeat(np.cumsum([0, *(len(m) for m in parts.macs[:-1])]), size)
    smac, dmac = src + base, dst + base
    table = codes(list(chain.from_iterable(parts.macs)))  # one pass for the whole run
    return Records(
        table[smac], table[dmac],
        # As sent (uint64 from columns): converted once the records are sorted out.
        np.concatenate(parts.nbytes), np.concatenate(parts.totals),
        np.repeat(np.array(parts.item, dtype=np.intp), size),
        starts.tolist(), parts.macs, src.astype(np.intp, copy=False),
        dst.astype(np.intp, copy=False),
    ), dropped


def _disagree(n: int, lengths: set[int], n_macs: int) -> str:
    return f"pair columns disagree ({n} sources, lengths {sorted(lengths)}, {n_macs} MACs)"
