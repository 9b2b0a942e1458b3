"""Per (src MAC, dst MAC) frame and byte counters, cheap enough for line rate.

One dict lookup per frame, keyed by the frame's own 12 header bytes (dst
then src, exactly as they sit in the frame), so counting slices nothing but
that key. Intervals are cut by the publisher, not per frame.
"""

from __future__ import annotations

from services.bus.paircols import PairRow
from services.forwarder.ethernet import mac_to_str

# Beyond this many distinct pairs, new pairs go into one overflow counter
# (a flood of spoofed MACs must not grow memory without bound).
DEFAULT_MAX_PAIRS = 65_536


class PairCounter:
    """Counts frames and bytes per 12-byte (dst + src) header key."""

    def __init__(self, max_pairs: int = DEFAULT_MAX_PAIRS) -> None:
        self.max_pairs = max_pairs
        # key -> [frames, bytes, frames at last cut, bytes at last cut]
        self.pairs: dict[bytes, list[int]] = {}
        self.overflow_frames = 0
        # key -> (src, dst) as text, made once per pair: cut() runs at the update rate
        self._names: dict[bytes, tuple[str, str]] = {}

    def add(self, key: bytes, nbytes: int) -> None:
        c = self.pairs.get(key)
        if c is None:
            if len(self.pairs) >= self.max_pairs:
                self.overflow_frames += 1
                return
            c = self.pairs[key] = [0, 0, 0, 0]
        c[0] += 1
        c[1] += nbytes

    def cut(self) -> list[PairRow]:
        """The pairs that saw traffic since the last cut, sorted; starts a new interval.

        Plain rows (src, dst, frames, bytes, total frames, total bytes), what
        the publisher encodes as they are: no object per pair."""
        out: list[PairRow] = []
        names = self._names
        for key, c in self.pairs.items():
            frames, nbytes, last_frames, last_bytes = c
            if frames != last_frames:
                name = names.get(key)
                if name is None:
                    name = names[key] = (mac_to_str(key[6:12]), mac_to_str(key[0:6]))
                out.append((name[0], name[1], frames - last_frames, nbytes - last_bytes,
                            frames, nbytes))
                c[2] = frames
                c[3] = nbytes
        out.sort()
        return out

    def totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(src, dst) -> (frames, bytes) since start; for tests and tools."""
        return {
            (mac_to_str(k[6:12]), mac_to_str(k[0:6])): (c[0], c[1]) for k, c in self.pairs.items()
        }
