"""The pipeline after the low-pass filter: normalise, prune, detect, damp.

Edges are undirected guest pairs (i < j) keyed as ``i << 32 | j`` in sorted
int64 arrays, so set operations are numpy calls and results are ordered.

- normalise and prune: an edge's intensity is the bytes/s both ways; weights
  are relative to the strongest edge, and edges under ``prune_fraction`` go;
- change detection: the distance between the candidate and the last reported
  topology is the share of edges that differ, |E xor R| / |E or R| (0 when
  both are empty); a change is reported when it exceeds the detection
  threshold and the candidate has settled: it held still for one update and
  the newest counting interval prunes to the same edges. Right after a
  change the window blends old and new traffic (old edges fade, new ones
  grow) while the newest interval already shows the new pattern; waiting
  until they agree reports a change that both adds and removes edges once,
  as its result, not first as the union of before and after. Traffic so
  bursty that single intervals never agree with the window is still
  reported once its candidate held for a whole window;
- damping: within ``damping_s`` of a report, the candidate is the union of
  every topology seen in the last ``damping_s``. An application that flips
  faster than that is reported once more, as the union of what it flips
  between, and then holds; an isolated change is reported without delay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from services.inference.grouping import groups
from services.inference.params import InferenceParams

KeyArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
SHIFT = 32
EMPTY: KeyArray = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Edges:
    """Undirected edges of one matrix: sorted keys with weight and bytes/s."""

    keys: KeyArray
    weight: FloatArray  # relative to the strongest edge, 0..1
    bytes_per_s: FloatArray

    @property
    def src(self) -> npt.NDArray[np.int64]:
        return self.keys >> SHIFT

    @property
    def dst(self) -> npt.NDArray[np.int64]:
        return self.keys & ((1 << SHIFT) - 1)


def undirected(
    src: npt.NDArray[np.intp], dst: npt.NDArray[np.intp], rate: FloatArray
) -> tuple[KeyArray, FloatArray]:
    """Directed pairs (sparse) → every guest pair's bytes/s both ways, sorted keys."""
    if not len(src):
        return EMPTY, np.zeros(0)
    lo = np.minimum(src, dst)
    hi = np.maximum(src, dst)
    m = int(hi.max()) + 1
    order, starts, pairs = groups(lo * m + hi, m * m)
    sums: FloatArray = np.add.reduceat(rate[order].astype(np.float64), starts)
    keys: KeyArray = ((pairs // m).astype(np.int64) << SHIFT) | (pairs % m)
    return keys, sums


def prune(keys: KeyArray, intensity: FloatArray, prune_fraction: float) -> Edges:
    """The edges at least prune_fraction of the strongest, weighted relative to it."""
    if not len(keys):
        return Edges(EMPTY, np.zeros(0), np.zeros(0))
    weight = intensity / float(intensity.max())
    kept = weight >= prune_fraction
    return Edges(keys[kept], weight[kept], intensity[kept])


def prune_dense(rates: FloatArray, prune_fraction: float) -> Edges:
    src, dst = np.nonzero(rates)
    keys, intensity = undirected(src, dst, rates[src, dst])
    return prune(keys, intensity, prune_fraction)


def common(a: KeyArray, b: KeyArray) -> int:
    """How many keys two sorted, duplicate-free key arrays share."""
    if not len(a) or not len(b):
        return 0
    pos = np.minimum(np.searchsorted(b, a), len(b) - 1)
    return int(np.count_nonzero(b[pos] == a))


def distance(a: KeyArray, b: KeyArray) -> float:
    """Share of edges in one topology but not the other (Jaccard distance)."""
    shared = common(a, b)
    union = len(a) + len(b) - shared
    return 0.0 if union == 0 else (union - shared) / union


def union(a: KeyArray, b: KeyArray) -> KeyArray:
    """Both sorted, duplicate-free key arrays in one (sorted, duplicate-free)."""
    both = np.concatenate([a, b])
    both.sort()
    keep = np.empty(len(both), dtype=bool)
    keep[:1] = True
    np.not_equal(both[1:], both[:-1], out=keep[1:])
    return both[keep]


@dataclass(frozen=True)
class Report:
    """A change to publish: the damped edge set and how far it moved."""

    keys: KeyArray
    distance: float


@dataclass
class ChangeDetector:
    """Change detection with damping over candidate edge sets (pure; time passed in).

    A candidate is "steady" when it equals the previous update's, "settled"
    when moreover the newest interval agrees with it. A settled candidate
    that moved more than the threshold from the reported topology is
    reported. If a steady candidate moves that far less than ``damping_s``
    after the last report, the application is flipping: the union of both is
    reported instead and held (grown if something new shows up) until the
    candidate has not moved by more than the threshold for ``damping_s``;
    then the candidate is reported if it differs from the union.
    """

    params: InferenceParams
    reported: KeyArray = field(default_factory=lambda: EMPTY)
    last_report_t: float = float("-inf")
    damped: bool = False
    _previous: KeyArray | None = None
    _since: float = float("-inf")
    _anchor: KeyArray = field(default_factory=lambda: EMPTY)
    _anchor_t: float = float("-inf")

    def step(
        self, now: float, candidate: KeyArray, recent: Callable[[], KeyArray]
    ) -> Report | None:
        """One update: the window's candidate edges; recent() gives those of the newest
        interval, asked only when a report hangs on it (not while nothing moves)."""
        threshold = self.params.detection_threshold
        if self._previous is None or not np.array_equal(candidate, self._previous):
            self._since = now
        self._previous = candidate
        steady = self._since < now  # held still since the previous update

        def settled() -> bool:
            # The candidate has held for a whole window (so bursts or an edge
            # on the pruning line cannot block a report forever), or the
            # newest interval agrees (the window no longer blends the traffic
            # before and after a change).
            return steady and (now - self._since >= self.params.smoothing_window_s
                               or np.array_equal(candidate, recent()))

        if distance(candidate, self._anchor) > threshold:
            self._anchor, self._anchor_t = candidate, now
        if self.damped:
            if now - self._anchor_t >= self.params.damping_s:
                self.damped = False
                return self._report_if_moved(now, candidate) if settled() else None
            grown = union(self.reported, candidate)
            return self._report_if_moved(now, grown) if steady else None
        if not steady or distance(candidate, self.reported) <= threshold:
            return None
        if now - self.last_report_t < self.params.damping_s:
            # Moving again so soon after a report: flapping. Hold the union.
            self.damped = True
            return self._report_if_moved(now, union(self.reported, candidate))
        return self._report(now, candidate) if settled() else None

    def _report_if_moved(self, now: float, keys: KeyArray) -> Report | None:
        if distance(keys, self.reported) <= self.params.detection_threshold:
            return None
        return self._report(now, keys)

    def _report(self, now: float, keys: KeyArray) -> Report:
        moved = distance(keys, self.reported)
        self.reported = keys
        self.last_report_t = now
        return Report(keys, moved)
