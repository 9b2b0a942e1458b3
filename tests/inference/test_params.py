"""The knobs: bad values are refused with the reason, and round-trip the wire."""

from __future__ import annotations

import argparse

import pytest

from services.inference import params
from services.inference.params import InferenceParams


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("update_rate_hz", 0.0, "must be > 0"),
        ("smoothing_window_s", -1.0, "finite number >= 0"),
        ("prune_fraction", 1.5, r"in \(0, 1\]"),
        ("detection_threshold", 1.0, r"in \[0, 1\)"),
        ("damping_s", float("nan"), "finite"),
    ],
)
def test_bad_knobs_are_refused_with_the_reason(field: str, value: float, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        InferenceParams(**{field: value})


def test_command_line_and_wire_round_trip() -> None:
    parser = argparse.ArgumentParser()
    params.add_arguments(parser)
    args = parser.parse_args(["--update-rate-hz", "20", "--smoothing-window-s", "0.25",
                              "--detection-threshold", "0"])
    knobs = params.from_args(args)
    assert knobs.update_rate_hz == 20 and knobs.smoothing_window_s == 0.25
    back = InferenceParams.from_pb(knobs.to_pb())
    assert back.to_pb() == knobs.to_pb()
    assert back.detection_threshold == 0.0
