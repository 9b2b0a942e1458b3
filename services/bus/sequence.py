"""Sequence tracking per (source, topic): PUB/SUB is lossy, so gaps are counted.

A publisher numbers each of its topics on its own, so a subscriber that
follows only some of them still sees consecutive numbers."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class SeqVerdict(Enum):
    IN_ORDER = "in_order"
    GAP = "gap"
    NEW_SOURCE = "new_source"
    RESTART = "restart"  # same source, new instance: seq starts again
    STALE = "stale"  # seq not above the last one seen: replay or duplicate


@dataclass(slots=True)
class _Last:
    instance: int
    seq: int


class SequenceTracker:
    """Remembers the last (instance, seq) per (source, topic); judges each new one."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], _Last] = {}
        self.gaps = 0  # messages known lost, summed over sources

    def observe(self, source: tuple[str, str], instance: int, seq: int) -> tuple[SeqVerdict, int]:
        """Judge one message; returns the verdict and how many were missed."""
        last = self._last.get(source)
        if last is None:
            self._last[source] = _Last(instance, seq)
            return SeqVerdict.NEW_SOURCE, 0
        if last.instance != instance:
            last.instance, last.seq = instance, seq
            return SeqVerdict.RESTART, 0
        if seq <= last.seq:
            return SeqVerdict.STALE, 0
        missed = seq - last.seq - 1
        last.seq = seq
        if missed:
            self.gaps += missed
            return SeqVerdict.GAP, missed
        return SeqVerdict.IN_ORDER, 0
