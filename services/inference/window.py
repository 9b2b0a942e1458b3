"""Per-forwarder counting intervals → one smoothed global traffic matrix.

Each forwarder contributes the mean of its last ``span`` intervals (span =
smoothing window / its interval length), counted by interval index, never by
clocks that differ between hosts. The sum of every forwarder's window is
kept incrementally: an interval adds its bytes (scaled to bytes/s over the
window) when it arrives and subtracts them when it slides out. What is kept
is what the pipeline reads each update, every guest pair's bytes/s both ways
(``both``); the directed matrix, wanted once per matrix period, is summed
from the windows when asked.

Lost intervals (a jump in ``interval_index``) are recovered from the
cumulative totals: the bytes a pair sent during intervals we never received
are spread evenly over those lost intervals, so a loss neither zeroes the
pair (nothing received) nor spikes it (all of it in one interval). A
forwarder restart (a new envelope ``instance``, totals from zero) continues
the same window: its first intervals follow the last one of the old
instance, and anything it counted before the first message we received is
recovered the same way. The only clock used is the service's own (each
interval's arrival time), to retire a forwarder that went silent.

Cost. Intervals come in runs (everything received between two updates):
:meth:`Accumulator.add_intervals` places them one by one, in order, with
Python scalars only, while the numbers move for the whole run at once: its
additions and subtractions in one ``np.add.at``, its pairs' totals in one
write. What the recovery needs of each pair (its last total, the interval it
came in, the forwarder instance that counted it) lives in dense guest ×
guest arrays, bounded, where a dict per forwarder grew with every pair ever
seen. The pairs with traffic are kept as a sorted list, updated from the
cells a run touches, so an update does not scan guests² cells.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from services.bus.counters import Counters
from services.inference.detect import SHIFT, KeyArray
from services.inference.grouping import distinct, groups

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]
FixedArray = npt.NDArray[np.int64]
Chunk = tuple[IndexArray, IndexArray, FixedArray]  # src, dst, bytes/s in fixed point

# Intervals a forwarder may run ahead of this service's clock (jitter, bursts).
_JUMP_SLACK = 20
_LOST_KEPT = 10_000  # lost interval indices remembered per forwarder
# Per pair, where it was last seen is one int64: the forwarder instance's
# epoch << _EPOCH_SHIFT | the interval, relative to that instance's start. A
# (forged) jump past _REL_LIMIT starts a fresh per-pair memory.
_EPOCH_SHIFT = 40
_REL_LIMIT = 1 << _EPOCH_SHIFT
_EPOCHS_KEPT = 1 << 20  # instances remembered (< 1 << (63 - _EPOCH_SHIFT))
# Rates are summed in fixed point, int64 in units of 1/FIXED B/s: adding and
# subtracting is exact, so a pair whose records all left the windows is
# exactly 0 (float sums leave residue of about 1e-6 B/s at multi-Gbit/s
# rates, which once all traffic stopped made up phantom edges). An interval
# counts at most MAX_RATE for a pair, which keeps every sum far inside int64.
FIXED = float(1 << 20)
MAX_RATE = float(1 << 36)  # B/s, about 550 Gbit/s


@dataclass(frozen=True)
class PairBatch:
    """Checked pairs as guest indices: of one interval, or of a whole run."""

    src: IndexArray
    dst: IndexArray
    bytes: FloatArray
    total_bytes: FloatArray

    def __len__(self) -> int:
        return len(self.src)

    def part(self, a: int, b: int) -> PairBatch:
        return PairBatch(self.src[a:b], self.dst[a:b], self.bytes[a:b], self.total_bytes[a:b])


class Interval(NamedTuple):
    """One counting interval of one forwarder: its pairs are records start:end of the run.

    A NamedTuple: one is made per message, and a frozen dataclass costs more.
    """

    host: str
    instance: int
    interval_index: int
    interval_s: float
    received: float  # this service's clock when it arrived
    start: int
    end: int


@dataclass(frozen=True)
class Run:
    """Intervals in arrival order and all their pairs, concatenated in that order."""

    intervals: Sequence[Interval]
    pairs: PairBatch


@dataclass
class _Entry:
    """One interval of one forwarder inside the window (maybe a lost one)."""

    v: int
    chunks: list[Chunk] = field(default_factory=list)


@dataclass
class _Window:
    instance: int
    base: int  # virtual index = base + interval_index
    interval_s: float
    last_rx: float
    has_baseline: bool  # totals start at zero (a restart we saw), so every byte is accounted
    instance_start_v: int  # virtual index just before this instance's first interval
    epoch: int  # this instance's id in the per-pair memory
    last_v: int | None = None
    entries: deque[_Entry] = field(default_factory=deque)
    lost: list[int] = field(default_factory=list)


class _Placing:
    """One run being placed: its records' bytes/s, which of them were taken (their
    interval placed) and where, and the chunks that leave or are recovered."""

    def __init__(self, run: Run, window_s: float) -> None:
        self.run = run
        n = len(run.pairs)
        spans = [min(MAX_SPAN, max(1, round(window_s / iv.interval_s))) for iv in run.intervals]
        scales = np.array([1.0 / (s * iv.interval_s) for s, iv in zip(
            spans, run.intervals, strict=True)])
        sizes = [iv.end - iv.start for iv in run.intervals]
        self.spans = spans
        # Each record's share of its window's mean, capped (see MAX_RATE).
        share = np.minimum(run.pairs.bytes * np.repeat(scales, sizes),
                           np.repeat([MAX_RATE / s for s in spans], sizes))
        self.rate: FixedArray = _fixed(share)
        self.taken = np.zeros(n, dtype=bool)  # records of intervals placed
        self.seen = np.zeros(n, dtype=np.int64)  # their epoch and interval (see _EPOCH_SHIFT)
        self.written_to = 0  # records before this are in the per-pair memory
        self.pending: set[int] = set()  # epochs with records not written yet
        self.placed: set[int] = set()  # epochs with records in this run
        self.repeats = False  # an epoch with several intervals: a pair may come twice
        self.leaving: list[Chunk] = []  # chunks that slid out of a window
        self.recovered: list[Chunk] = []  # chunks of lost intervals


class Accumulator:
    """The smoothed global matrix (bytes/s, directed) from every forwarder's windows."""

    def __init__(self, counters: Counters, capacity: int = 16) -> None:
        self.counters = counters
        capacity = 1 << max(0, capacity - 1).bit_length()  # a power of two: shifts, not divisions
        # Per pair, at [lo, hi] (lo <= hi): its bytes/s summed both ways (in
        # fixed point), what the pipeline reads each update. The directed
        # matrix is summed from the windows when asked (among()).
        self.both: FixedArray = np.zeros((capacity, capacity), dtype=np.int64)
        # The flat indices of the pairs with traffic, sorted: kept
        # from the cells each run touches, so an update reads the pairs
        # without scanning guests² cells.
        self._active: IndexArray = np.zeros(0, dtype=np.intp)
        # Per pair, for the recovery: its last cumulative total, and where it
        # came in: epoch and interval (-1: not yet).
        self._total: FloatArray = np.zeros((capacity, capacity))
        self._seen: npt.NDArray[np.int64] = np.full((capacity, capacity), -1, dtype=np.int64)
        self._live = bytearray()  # per epoch: 1 while its forwarder instance is the current one
        self.windows: dict[str, _Window] = {}

    @property
    def capacity(self) -> int:
        return int(self.both.shape[0])

    def ensure(self, n: int) -> None:
        """Room for n guests (grows to a power of two; indices never move)."""
        cap = self.capacity
        if n <= cap:
            return
        new_cap = max(2 * cap, 1 << (n - 1).bit_length())
        self.both = _grown(self.both, new_cap, 0)
        self._active = np.flatnonzero(self.both)
        self._total = _grown(self._total, new_cap, 0)
        self._seen = _grown(self._seen, new_cap, -1)

    def _new_epoch(self) -> int:
        if len(self._live) >= _EPOCHS_KEPT:
            # Restarts without end (a rogue sender's instances): start the
            # per-pair memory afresh rather than let it grow.
            self.counters.inc("pair_memory_reset")
            self._seen.fill(-1)
            self._live = bytearray()
            for w in self.windows.values():
                w.epoch = len(self._live)
                w.has_baseline = False
                self._live.append(1)
        self._live.append(1)
        return len(self._live) - 1

    # ------------------------------------------------------------ intervals

    def add_intervals(self, run: Run, window_s: float) -> list[str | None]:
        """Take a run of intervals in arrival order; per interval, an error when dropped."""
        placing = _Placing(run, window_s)
        results = [self._place(k, placing) for k in range(len(run.intervals))]
        self._write(placing, len(run.pairs))
        taken = placing.taken
        every = taken.all()
        pairs = run.pairs
        self._change(
            [(pairs.src if every else pairs.src[taken], pairs.dst if every else pairs.dst[taken],
              placing.rate if every else placing.rate[taken]), *placing.recovered],
            placing.leaving,
        )
        return results

    def _place(self, k: int, placing: _Placing) -> str | None:
        iv = placing.run.intervals[k]
        now, index, interval_s = iv.received, iv.interval_index, iv.interval_s
        w = self.windows.get(iv.host)
        if w is None:
            # First sight of this forwarder: no baseline for its totals, so
            # whatever it counted before now is history we do not replay.
            w = _Window(iv.instance, 0, interval_s, now, False, index - 1, self._new_epoch())
            self.windows[iv.host] = w
        elif w.instance != iv.instance:
            self.counters.inc("forwarder_restarts")
            first = 1 if index >= 1 else 0
            prev = w.last_v if w.last_v is not None else index - 1
            w.instance = iv.instance
            w.base = prev + 1 - first
            w.instance_start_v = w.base + first - 1
            w.has_baseline = True
            self._live[w.epoch] = 0  # its pairs' totals counted from another zero
            w.epoch = self._new_epoch()
            w.last_v = prev
        v = w.base + index
        if w.last_v is not None and v <= w.last_v:
            self.counters.inc("counts_out_of_order")
            return (
                f"forwarder {iv.host!r} interval {index} is not after {w.last_v - w.base}:"
                " out of order or repeated, dropped"
            )
        if w.last_v is not None and w.entries:
            # A jump further ahead than this service's own clock allows is
            # not lost intervals but a bad (or forged) count: taking it would
            # make every real interval after it look out of order.
            allowed = 2 * (now - w.last_rx) / interval_s + _JUMP_SLACK
            if v - w.last_v > allowed:
                self.counters.inc("counts_implausible")
                return (
                    f"forwarder {iv.host!r} interval {index} jumps {v - w.last_v} intervals"
                    f" ahead after {now - w.last_rx:.2f}s (at most {allowed:.0f} plausible),"
                    " dropped"
                )
        if v - w.instance_start_v >= _REL_LIMIT:
            # Only after a silence and a forged index: forget the pairs' totals.
            self._live[w.epoch] = 0
            w.epoch = self._new_epoch()
            w.has_baseline = False
            w.instance_start_v = v - 1
        span = placing.spans[k]
        w.interval_s = interval_s
        w.last_rx = now
        first_missing = (w.last_v + 1) if w.last_v is not None else v
        first_missing = max(first_missing, w.instance_start_v + 1)
        if first_missing < v:
            self.counters.inc("intervals_lost", v - first_missing)
            w.lost.extend(range(max(first_missing, v - _LOST_KEPT), v))
            del w.lost[:-_LOST_KEPT]
            for lv in range(max(first_missing, v - span + 1), v):
                w.entries.append(_Entry(lv))
        entry = _Entry(v)
        w.entries.append(entry)
        w.last_v = v
        while w.entries[0].v < v - span + 1:
            placing.leaving += w.entries.popleft().chunks
        a, b = iv.start, iv.end
        placing.taken[a:b] = True
        if a == b:
            return None
        pairs = placing.run.pairs
        entry.chunks.append((pairs.src[a:b], pairs.dst[a:b], placing.rate[a:b]))
        if w.lost and w.lost[-1] > w.instance_start_v:
            if w.epoch in placing.pending:
                self._write(placing, a)  # the lookup must see this run's earlier intervals
            self._recover(w, span, iv.interval_s, pairs.part(a, b), placing)
        placing.seen[a:b] = (w.epoch << _EPOCH_SHIFT) | (v - w.instance_start_v)
        placing.pending.add(w.epoch)
        placing.repeats |= w.epoch in placing.placed
        placing.placed.add(w.epoch)
        return None

    def _recover(self, w: _Window, span: int, interval_s: float, pairs: PairBatch,
                 placing: _Placing) -> None:
        """Spread the bytes of lost intervals (from the totals) over those intervals."""
        start = w.instance_start_v
        flat = pairs.src * self.capacity + pairs.dst
        seen = self._seen.reshape(-1)[flat]
        owner = seen >> _EPOCH_SHIFT  # -1 stays -1
        own = owner == w.epoch
        last = np.where(own, seen & (_REL_LIMIT - 1), 0)  # 0: the instance's start
        prev = np.where(own, self._total.reshape(-1)[flat], 0.0)
        if w.has_baseline:
            # Totals count from this instance's zero, so a pair not seen yet
            # started from 0 at its start; unless another live forwarder holds
            # the pair (a guest listed on two hosts): then we know nothing.
            live = np.frombuffer(bytes(self._live), dtype=np.uint8).astype(bool)
            known = ~((owner >= 0) & ~own & live[np.maximum(owner, 0)])
        else:
            known = own
        candidate = known & (last < w.lost[-1] - start)
        if not candidate.any():
            return
        extra = pairs.total_bytes - prev - pairs.bytes
        inconsistent = int(np.count_nonzero(candidate & (extra < -0.5)))
        if inconsistent:
            self.counters.inc("totals_inconsistent", inconsistent)
        take = candidate & (extra > 0.5)
        if not take.any():
            return
        lost = np.array([lv - start for lv in w.lost if lv > start], dtype=np.int64)
        last_t, extra_t = last[take], extra[take]
        missed = len(lost) - np.searchsorted(lost, last_t, side="right")
        per = _fixed(np.minimum(extra_t * (1.0 / (span * interval_s)) / missed,
                                MAX_RATE / span))
        src_t, dst_t = pairs.src[take], pairs.dst[take]
        first = w.entries[0].v - start  # entries are contiguous up to v after the slide
        for lv in lost[lost >= first].tolist():
            hit = last_t < lv
            if hit.any():
                chunk = (src_t[hit], dst_t[hit], per[hit])
                w.entries[lv - first].chunks.append(chunk)
                placing.recovered.append(chunk)
        self.counters.inc("bytes_recovered", int(np.trunc(extra_t).sum()))

    def _write(self, placing: _Placing, upto: int) -> None:
        """Put the placed records before upto in the per-pair memory; a pair's last wins."""
        a = placing.written_to
        if upto <= a:
            return
        placing.written_to = upto
        placing.pending.clear()
        pairs = placing.run.pairs
        taken = placing.taken[a:upto]
        flat = pairs.src[a:upto] * self.capacity + pairs.dst[a:upto]
        totals, seen = pairs.total_bytes[a:upto], placing.seen[a:upto]
        if not taken.all():
            flat, totals, seen = flat[taken], totals[taken], seen[taken]
        if placing.repeats and len(flat):
            # A pair in several intervals of one forwarder (it counts faster
            # than the updates run): keep its last, the last of its stable group.
            order, starts, flat = groups(flat, self.capacity**2)
            last = order[np.append(starts[1:], len(order)) - 1]
            totals, seen = totals[last], seen[last]
        self._total.reshape(-1)[flat] = totals
        self._seen.reshape(-1)[flat] = seen

    def _change(self, adding: list[Chunk], leaving: list[Chunk]) -> None:
        """Chunks in and out of the window sums, in one np.add.at (and the list of
        pairs with traffic kept up)."""
        if not leaving and sum(len(c[0]) for c in adding) == 0:
            return
        chunks = [*adding, *leaving]
        src = np.concatenate([c[0] for c in chunks])
        dst = np.concatenate([c[1] for c in chunks])
        rate = np.concatenate([c[2] for c in adding] + [-c[2] for c in leaving])
        cap = self.capacity
        flat = np.minimum(src, dst) * cap + np.maximum(src, dst)
        both = self.both.reshape(-1)
        had = both[flat] != 0
        np.add.at(both, flat, rate)
        has = both[flat] != 0
        gone = distinct(flat[had & ~has])
        came = distinct(flat[has & ~had])
        active = self._active
        if len(gone):
            keep = np.ones(len(active), dtype=bool)
            keep[np.searchsorted(active, gone)] = False
            active = active[keep]
        if len(came):
            merged = np.empty(len(active) + len(came), dtype=np.intp)
            at = np.searchsorted(active, came) + np.arange(len(came))
            put = np.zeros(len(merged), dtype=bool)
            put[at] = True
            merged[at] = came
            merged[~put] = active
            active = merged
        self._active = active

    # ------------------------------------------------------------ liveness

    def expire(self, now: float, window_s: float) -> list[str]:
        """Retire the windows of forwarders silent for a window and two intervals."""
        gone: list[str] = []
        leaving: list[Chunk] = []
        for host, w in self.windows.items():
            if w.entries and now - w.last_rx > window_s + 2 * w.interval_s:
                while w.entries:
                    leaving += w.entries.popleft().chunks
                self.counters.inc("forwarders_silent")
                gone.append(host)
        self._change([], leaving)
        return gone

    # ------------------------------------------------------------ reading

    def undirected(self, n: int) -> tuple[KeyArray, FloatArray]:
        """Every pair among the first n guests with traffic: its key (detect.py) and
        bytes/s both ways, in key order."""
        active = self._active
        shift = self.capacity.bit_length() - 1
        lo, hi = active >> shift, active & (self.capacity - 1)
        if len(active) and int(hi.max()) >= n:  # lo <= hi: hi alone says it
            inside = hi < n
            active, lo, hi = active[inside], lo[inside], hi[inside]
        keys: KeyArray = (lo.astype(np.int64) << SHIFT) | hi
        return keys, self.both.reshape(-1)[active] / FIXED

    def recent_pairs(self, n: int) -> tuple[IndexArray, IndexArray, FloatArray]:
        """The same over the newest interval of each forwarder only (same scale).

        When it prunes to the same edges as the whole window, the window
        holds one traffic pattern, not the blend of before and after a
        change. Sparse and unsummed: a pair two forwarders both count comes
        twice (the undirected sum adds them).
        """
        chunks = [c for w in self.windows.values() if w.entries for c in w.entries[-1].chunks]
        if not chunks:
            none = np.zeros(0, dtype=np.intp)
            return none, none, np.zeros(0)
        src = np.concatenate([c[0] for c in chunks])
        dst = np.concatenate([c[1] for c in chunks])
        rate = np.concatenate([c[2] for c in chunks])
        keep = (src < n) & (dst < n) & (rate > 0)
        return src[keep], dst[keep], rate[keep] / FIXED

    def matrix(self, n: int) -> FloatArray:
        """The directed bytes/s matrix over the first n guests (a copy, ≥ 0)."""
        return self.among(range(n))

    def among(self, guests: Sequence[int]) -> FloatArray:
        """The directed bytes/s matrix among these guests, in this order (≥ 0).

        Summed from the windows' intervals now: it is wanted once per matrix
        period, not per update.
        """
        k = len(guests)
        chunks = [c for w in self.windows.values() for e in w.entries for c in e.chunks]
        if not k or not chunks:
            return np.zeros((k, k))
        where = np.full(self.capacity, -1, dtype=np.intp)
        where[np.asarray(guests, dtype=np.intp)] = np.arange(k)
        src = where[np.concatenate([c[0] for c in chunks])]
        dst = where[np.concatenate([c[1] for c in chunks])]
        rate = np.concatenate([c[2] for c in chunks])
        keep = (src >= 0) & (dst >= 0)
        total = np.zeros(k * k, dtype=np.int64)
        np.add.at(total, src[keep] * k + dst[keep], rate[keep])
        return (total / FIXED).reshape(k, k)


_T = TypeVar("_T", bound=np.generic)


def _fixed(rate: FloatArray) -> FixedArray:
    return np.rint(rate * FIXED).astype(np.int64)


def _grown(old: npt.NDArray[_T], cap: int, fill: int) -> npt.NDArray[_T]:
    out = np.full((cap, cap), fill, dtype=old.dtype)
    out[: old.shape[0], : old.shape[1]] = old
    return out


MIN_INTERVAL_S = 0.001
MAX_INTERVAL_S = 3600.0
MAX_SPAN = 10_000  # intervals per window: bounds memory and the work of a gap


def valid_interval(interval_s: float) -> bool:
    return math.isfinite(interval_s) and MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S
