"""The compute phase: burn CPU for a time, or for an amount of work.

Time (busy_for) keeps the compute phase the same length whatever else runs
on the host; work (busy_ops) takes longer on a loaded or slower host, which is
what an external-load experiment needs. An operation is one step of a linear
congruential generator in pure Python (tens of nanoseconds).
"""

from __future__ import annotations

import time
from collections.abc import Callable

_CHUNK_OPS = 2000  # between clock reads in busy_for


def busy_ops(ops: int, seed: int = 1) -> int:
    """Do ops operations; returns the generator's state so none of it is dead code."""
    x = seed
    for _ in range(ops):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    return x


def busy_for(seconds: float, clock: Callable[[], float] = time.monotonic) -> int:
    """Keep the CPU busy for seconds of wall-clock time; returns the operations done."""
    if seconds <= 0:
        return 0
    end = clock() + seconds
    done = 0
    x = 1
    while clock() < end:
        x = busy_ops(_CHUNK_OPS, x)
        done += _CHUNK_OPS
    return done
