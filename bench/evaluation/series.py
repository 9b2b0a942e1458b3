"""Application throughput over time, from the workers' running iteration counts.

Pure: takes (time, iterations) points per worker, as the runner timestamps the
AppReports it receives. A bulk-synchronous application moves at one pace, so
its throughput over a window is the mean over workers of each one's
iterations gained divided by the time between its first and last point there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Points = Mapping[str, Sequence[tuple[float, int]]]  # guest -> (time s, iterations so far)


def rate(points: Points, since: float, until: float) -> float:
    """Iterations per second in [since, until]; 0 when no worker has two points there."""
    rates = []
    for pts in points.values():
        inside = [p for p in pts if since <= p[0] <= until]
        if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
            (t0, i0), (t1, i1) = inside[0], inside[-1]
            rates.append((i1 - i0) / (t1 - t0))
    return sum(rates) / len(rates) if rates else 0.0


def timeline(points: Points, start: float, end: float, step_s: float = 1.0,
             window_s: float = 3.0) -> list[tuple[float, float]]:
    """(seconds since start, rate over the window ending then), every step_s."""
    out = []
    t = start + window_s
    while t <= end + 1e-9:
        out.append((round(t - start, 3), rate(points, t - window_s, t)))
        t += step_s
    return out


def time_to_fraction(line: Sequence[tuple[float, float]], target: float,
                     fraction: float = 0.9) -> float | None:
    """The first time on the timeline whose rate reaches fraction x target (None: never)."""
    if target <= 0:
        return None
    for t, r in line:
        if r >= fraction * target:
            return t
    return None
