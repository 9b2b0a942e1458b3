"""The inference knobs, declared once with their defaults and their effect.

Each field's doc says what turning it does, because that is what an operator
needs when the topology looks wrong (too jumpy, too slow, too sparse).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields
from typing import Any

from services.bus.pb import vnet_pb2 as pb

# How often the service publishes, not how it infers: not in published params.
_NOT_ON_THE_WIRE = frozenset({"matrix_period_s", "change_republish_s"})


def _knob(default: float, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class InferenceParams:
    update_rate_hz: float = _knob(
        1.0,
        "how often the pipeline runs (filter, prune, detect): higher reacts sooner"
        " and costs more CPU; forwarders count at their own rate (default 1 Hz)",
    )
    smoothing_window_s: float = _knob(
        3.0,
        "low-pass filter: the matrix is each forwarder's mean rate over its intervals"
        " in this many seconds; longer hides bursts but reacts later (a change shows"
        " within one window)",
    )
    prune_fraction: float = _knob(
        0.1,
        "edges weaker than this fraction of the strongest are dropped: raise it to"
        " ignore more background chatter, lower it to keep weak application edges",
    )
    detection_threshold: float = _knob(
        0.1,
        "a change is reported when this share of edges differs (|E xor E'| / |E or E'|)"
        " between the pruned matrix and the last reported one; 0 reports every edge"
        " flip, 1 only total replacements",
    )
    damping_s: float = _knob(
        6.0,
        "a change less than this many seconds after the last report means the"
        " application is flipping: the union of both topologies is reported and held"
        " until the traffic stays put for damping_s; longer rides out slower flapping,"
        " but a genuine second change soon after a first is reported this much later",
    )
    matrix_period_s: float = _knob(
        1.0, "seconds between traffic.matrix publications (at most one per update)"
    )
    change_republish_s: float = _knob(
        5.0,
        "seconds between repeats of the latest topology.change (same change_id), so a"
        " planner that started late or lost it on the bus still gets it; shorter heals"
        " sooner for a little bus traffic; 0 sends each change once",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{f.name}={value!r} must be a finite number >= 0")
        if self.update_rate_hz <= 0:
            raise ValueError(f"update_rate_hz={self.update_rate_hz!r} must be > 0")
        if self.smoothing_window_s <= 0:
            raise ValueError(f"smoothing_window_s={self.smoothing_window_s!r} must be > 0")
        if not 0 < self.prune_fraction <= 1:
            raise ValueError(f"prune_fraction={self.prune_fraction!r} must be in (0, 1]")
        if not 0 <= self.detection_threshold < 1:
            raise ValueError(
                f"detection_threshold={self.detection_threshold!r} must be in [0, 1)"
            )

    @property
    def update_period_s(self) -> float:
        return 1.0 / self.update_rate_hz

    def to_pb(self) -> pb.InferenceParams:
        return pb.InferenceParams(
            update_rate_hz=self.update_rate_hz,
            smoothing_window_s=self.smoothing_window_s,
            prune_fraction=self.prune_fraction,
            detection_threshold=self.detection_threshold,
            damping_s=self.damping_s,
        )

    @classmethod
    def from_pb(cls, msg: pb.InferenceParams) -> InferenceParams:
        """The knobs a published message was made with (defaults where unset)."""
        values = {
            f.name: getattr(msg, f.name)
            for f in fields(cls)
            if f.name not in _NOT_ON_THE_WIRE and getattr(msg, f.name) > 0
        }
        if msg.detection_threshold == 0:
            values["detection_threshold"] = 0.0
        return cls(**values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One --option per knob, e.g. --smoothing-window-s."""
    group = parser.add_argument_group("inference")
    for f in fields(InferenceParams):
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=float,
            default=f.default,
            help=f"{f.metadata['doc']} (default {f.default!r})",
        )


def from_args(args: argparse.Namespace) -> InferenceParams:
    return InferenceParams(**{f.name: getattr(args, f.name) for f in fields(InferenceParams)})
