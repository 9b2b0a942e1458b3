"""Sorting integer keys into groups, fast: the one sort the inference does per update.

numpy's argsort and unique cost several times a plain sort of int64 (which
numpy runs with SIMD), so where the keys and their positions fit in 62 bits
together, they are packed in one int64 and sorted plainly; the position
breaks ties, so the order is the stable one either way. Walking large dense
arrays in sorted key order also keeps their cache and TLB misses down.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

IndexArray = npt.NDArray[np.intp]


def groups(keys: IndexArray, bound: int) -> tuple[IndexArray, IndexArray, IndexArray]:
    """Keys (0 <= key < bound) stably sorted: (order, where each group starts, its key)."""
    n = len(keys)
    if not n:
        return keys, keys, keys
    bits = n.bit_length()
    if bound < 1 << (62 - bits):
        packed = (keys.astype(np.int64) << bits) | np.arange(n, dtype=np.int64)
        packed.sort()
        order: IndexArray = packed & ((1 << bits) - 1)
        ordered: IndexArray = packed >> bits
    else:
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    return order, starts, ordered[starts]


def distinct(keys: IndexArray) -> IndexArray:
    """Sorted, without repeats."""
    keys = np.sort(keys)
    keep = np.empty(len(keys), dtype=bool)
    keep[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=keep[1:])
    return keys[keep]
