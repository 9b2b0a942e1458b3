"""Named event counters, reported in heartbeats and checked by tests."""

from __future__ import annotations

from collections import Counter


class Counters:
    """A bag of monotonically increasing counters keyed by name."""

    def __init__(self) -> None:
        self._values: Counter[str] = Counter()

    def inc(self, name: str, amount: int = 1) -> None:
        self._values[name] += amount

    def __getitem__(self, name: str) -> int:
        return self._values[name]

    def snapshot(self) -> dict[str, int]:
        return dict(self._values)
