"""The counting-cost interval the forwarder bench decides its rounds by."""

from __future__ import annotations

import statistics

import numpy as np

from bench.forwarder import cost_interval


def test_interval_holds_the_estimate_and_narrows_with_more_runs() -> None:
    rng = np.random.default_rng(7)
    few = list(0.97 + 0.08 * rng.standard_normal(12))
    many = list(0.97 + 0.08 * rng.standard_normal(48))
    for ratios in (few, many):
        low, high = cost_interval(ratios, 0.9)
        assert low <= 1.0 - statistics.median(ratios) <= high
    def width(ratios: list[float]) -> float:
        low, high = cost_interval(ratios, 0.9)
        return high - low

    assert width(many) < width(few)


def test_interval_is_repeatable_and_wider_at_a_higher_level() -> None:
    ratios = [0.93, 0.95, 0.95, 0.96, 0.96, 0.97, 0.98, 0.99, 1.0, 1.01, 1.03, 1.04]
    assert cost_interval(ratios, 0.9) == cost_interval(ratios, 0.9)
    low90, high90 = cost_interval(ratios, 0.9)
    low99, high99 = cost_interval(ratios, 0.99)
    assert low99 <= low90 and high90 <= high99
    assert high90 < 0.05  # this spread decides "under 5 %" after 12 runs


def test_identical_runs_give_a_point() -> None:
    low, high = cost_interval([0.9] * 8, 0.9)
    assert low == high and abs(low - 0.1) < 1e-12
