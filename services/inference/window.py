"""Per-forwarder counting intervals → one smoothed global rate matrix.

Each forwarder contributes the mean of its last ``span`` intervals (span =
smoothing window / its interval length), counted by interval index, never by
clocks that differ between hosts. The global matrix ``rates`` is the running
sum of every forwarder's window, kept incrementally: an interval adds its
bytes (scaled to bytes/s over the window) when it arrives and subtracts them
when it slides out.

Lost intervals (a jump in ``interval_index``) are recovered from the
cumulative totals: the bytes a pair sent during intervals we never received
are spread evenly over those lost intervals, so a loss neither zeroes the
pair (nothing received) nor spikes it (all of it in one interval). A
forwarder restart (a new envelope ``instance``, totals from zero) continues
the same window: its first intervals follow the last one of the old
instance, and anything it counted before the first message we received is
recovered the same way. The only clock used is the service's own, to retire
a forwarder that went silent.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from services.bus.counters import Counters

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]

_KEY_SHIFT = 32
# Intervals a forwarder may run ahead of this service's clock (jitter, bursts).
_JUMP_SLACK = 20
_LOST_KEPT = 10_000  # lost interval indices remembered per forwarder


@dataclass(frozen=True)
class PairBatch:
    """The checked pairs of one FrameCounts, as guest indices."""

    src: IndexArray
    dst: IndexArray
    bytes: FloatArray
    total_bytes: FloatArray

    @classmethod
    def build(
        cls, src: list[int], dst: list[int], nbytes: list[int], totals: list[int]
    ) -> PairBatch:
        return cls(
            np.asarray(src, dtype=np.intp),
            np.asarray(dst, dtype=np.intp),
            np.asarray(nbytes, dtype=np.float64),
            np.asarray(totals, dtype=np.float64),
        )


@dataclass
class _Entry:
    """One interval of one forwarder inside the window (maybe a lost one)."""

    v: int
    chunks: list[tuple[IndexArray, IndexArray, FloatArray]] = field(default_factory=list)
    recent: bool = True  # also counted in ``recent`` (the newest interval)


@dataclass
class _Window:
    instance: int
    base: int  # virtual index = base + interval_index
    interval_s: float
    last_rx: float
    has_baseline: bool  # totals start at zero (a restart we saw), so every byte is accounted
    instance_start_v: int  # virtual index just before this instance's first interval
    last_v: int | None = None
    entries: deque[_Entry] = field(default_factory=deque)
    totals: dict[int, float] = field(default_factory=dict)
    pair_last_v: dict[int, int] = field(default_factory=dict)
    lost: list[int] = field(default_factory=list)


class Accumulator:
    """The smoothed global matrix (bytes/s, directed) from every forwarder's windows."""

    def __init__(self, counters: Counters, capacity: int = 16) -> None:
        self.counters = counters
        self.rates: FloatArray = np.zeros((capacity, capacity))
        # The same over the newest interval of each forwarder only (same
        # scale): when it prunes to the same edges as the whole window, the
        # window holds one traffic pattern, not the blend of before and after
        # a change.
        self.recent: FloatArray = np.zeros((capacity, capacity))
        self.windows: dict[str, _Window] = {}

    def ensure(self, n: int) -> None:
        """Room for n guests (grows by doubling; indices never move)."""
        cap = self.rates.shape[0]
        if n <= cap:
            return
        new_cap = max(n, 2 * cap)
        grown = np.zeros((new_cap, new_cap))
        grown[:cap, :cap] = self.rates
        self.rates = grown
        grown = np.zeros((new_cap, new_cap))
        grown[:cap, :cap] = self.recent
        self.recent = grown

    # ------------------------------------------------------------ intervals

    def add(
        self,
        host: str,
        instance: int,
        index: int,
        interval_s: float,
        window_s: float,
        batch: PairBatch,
        now: float,
    ) -> str | None:
        """Take one interval; returns an error when it was dropped."""
        w = self.windows.get(host)
        if w is None:
            # First sight of this forwarder: no baseline for its totals, so
            # whatever it counted before now is history we do not replay.
            w = _Window(instance, 0, interval_s, now, False, index - 1)
            self.windows[host] = w
        elif w.instance != instance:
            self.counters.inc("forwarder_restarts")
            first = 1 if index >= 1 else 0
            prev = w.last_v if w.last_v is not None else index - 1
            w.instance = instance
            w.base = prev + 1 - first
            w.instance_start_v = w.base + first - 1
            w.has_baseline = True
            w.totals.clear()
            w.pair_last_v.clear()
            w.last_v = prev
        v = w.base + index
        if w.last_v is not None and v <= w.last_v:
            self.counters.inc("counts_out_of_order")
            return (
                f"forwarder {host!r} interval {index} is not after {w.last_v - w.base}:"
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
                    f"forwarder {host!r} interval {index} jumps {v - w.last_v} intervals"
                    f" ahead after {now - w.last_rx:.2f}s (at most {allowed:.0f} plausible),"
                    " dropped"
                )
        span = min(MAX_SPAN, max(1, round(window_s / interval_s)))
        scale = 1.0 / (span * interval_s)
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
        self._slide(w, v - span + 1, v)
        if len(batch.src):
            rate = batch.bytes * scale
            entry.chunks.append((batch.src, batch.dst, rate))
            np.add.at(self.rates, (batch.src, batch.dst), rate)
            np.add.at(self.recent, (batch.src, batch.dst), rate)
            self._recover(w, v, scale, batch)
        return None

    def _recover(self, w: _Window, v: int, scale: float, batch: PairBatch) -> None:
        """Spread the bytes of lost intervals (from the totals) over those intervals."""
        keys = ((batch.src.astype(np.int64) << _KEY_SHIFT) | batch.dst).tolist()
        totals = batch.total_bytes.tolist()
        if w.lost and w.lost[-1] > w.instance_start_v:
            start = w.instance_start_v
            first_v = w.entries[0].v  # entries are contiguous up to v after the slide
            for i, key in enumerate(keys):
                last = w.pair_last_v.get(key)
                if last is None:
                    if not w.has_baseline:
                        continue
                    prev, last = 0.0, start
                else:
                    prev = w.totals[key]
                if w.lost[-1] <= last:
                    continue
                extra = totals[i] - prev - float(batch.bytes[i])
                if extra < -0.5:
                    self.counters.inc("totals_inconsistent")
                    continue
                if extra <= 0.5:
                    continue
                left = bisect.bisect_right(w.lost, last)
                missed = w.lost[left:]
                per = extra * scale / len(missed)
                pair = (batch.src[i : i + 1], batch.dst[i : i + 1])
                for lv in missed[bisect.bisect_left(missed, first_v) :]:
                    target = w.entries[lv - first_v]
                    target.chunks.append((pair[0], pair[1], np.array([per])))
                    self.rates[pair[0][0], pair[1][0]] += per
                    if target.recent:
                        self.recent[pair[0][0], pair[1][0]] += per
                self.counters.inc("bytes_recovered", int(extra))
        w.totals.update(zip(keys, totals, strict=True))
        w.pair_last_v.update(dict.fromkeys(keys, v))

    def _slide(self, w: _Window, keep_from: int, recent_from: int) -> None:
        """Drop entries older than keep_from; older than recent_from leave ``recent``."""
        while w.entries and w.entries[0].v < keep_from:
            self._subtract(w.entries.popleft())
        # Entries are contiguous in v; walk back from the newest that leaves `recent`.
        k = recent_from - 1 - w.entries[0].v if w.entries else -1
        while k >= 0 and w.entries[k].recent:
            w.entries[k].recent = False
            for src, dst, rate in w.entries[k].chunks:
                np.subtract.at(self.recent, (src, dst), rate)
            k -= 1

    def _subtract(self, entry: _Entry) -> None:
        for src, dst, rate in entry.chunks:
            np.subtract.at(self.rates, (src, dst), rate)
            if entry.recent:
                np.subtract.at(self.recent, (src, dst), rate)

    # ------------------------------------------------------------ liveness

    def expire(self, now: float, window_s: float) -> list[str]:
        """Retire the windows of forwarders silent for a window and two intervals."""
        gone: list[str] = []
        for host, w in self.windows.items():
            if w.entries and now - w.last_rx > window_s + 2 * w.interval_s:
                while w.entries:
                    self._subtract(w.entries.popleft())
                self.counters.inc("forwarders_silent")
                gone.append(host)
        return gone

    def pairs(self, n: int, recent: bool = False) -> tuple[IndexArray, IndexArray, FloatArray]:
        """The directed pairs with traffic among the first n guests (sparse)."""
        full = self.recent if recent else self.rates
        cap = full.shape[0]
        flat = full.ravel()  # contiguous: a view, and a 1-D scan is the fast one
        # Incremental add/subtract leaves rounding crumbs around zero.
        idx = np.flatnonzero(flat > 1e-9)
        src, dst = np.divmod(idx, cap)
        inside = (src < n) & (dst < n)
        return src[inside], dst[inside], flat[idx[inside]]

    def matrix(self, n: int, recent: bool = False) -> FloatArray:
        """The directed bytes/s matrix over the first n guests (a copy, ≥ 0).

        With recent, over the newest interval of each forwarder only.
        """
        out = (self.recent if recent else self.rates)[:n, :n].copy()
        # Incremental add/subtract leaves rounding crumbs around zero.
        out[out < 1e-9] = 0.0
        return out


MIN_INTERVAL_S = 0.001
MAX_INTERVAL_S = 3600.0
MAX_SPAN = 10_000  # intervals per window: bounds memory and the work of a gap


def valid_interval(interval_s: float) -> bool:
    return math.isfinite(interval_s) and MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S
