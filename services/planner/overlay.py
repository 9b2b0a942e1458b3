"""The original's overlay step: fast-path links by decreasing host-pair intensity.

Guest-pair intensities become host-pair intensities under a placement; host
pairs are taken in decreasing intensity (ties: lower host indices first) and
each gets a fast-path link until the cost constraint stops it. Pairs with the
proxy are already joined by the resilient star, which always stays, so their
traffic counts as covered and they never get a second link.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.planner.model import FloatArray, InputError, IntArray, Problem


@dataclass(frozen=True)
class CostConstraint:
    """When to stop adding links; every limit given applies (None = no limit)."""

    share: float | None = 0.9  # of total host-pair intensity on direct links
    max_links: int | None = None  # fast-path links in the whole overlay
    budget_bps: float | None = None  # bits/s the fast-path links may carry in all

    def __post_init__(self) -> None:
        if self.share is not None and not 0.0 <= self.share <= 1.0:
            raise InputError(f"share {self.share!r} must be within 0..1")
        if self.max_links is not None and self.max_links < 0:
            raise InputError(f"max_links {self.max_links!r} must be >= 0")
        if self.budget_bps is not None and not (np.isfinite(self.budget_bps)
                                                and self.budget_bps >= 0):
            raise InputError(f"budget_bps {self.budget_bps!r} must be a finite value >= 0")

    def describe(self) -> str:
        parts = []
        if self.share is not None:
            parts.append(f"share >= {self.share:.0%}")
        if self.max_links is not None:
            parts.append(f"links <= {self.max_links}")
        if self.budget_bps is not None:
            parts.append(f"budget <= {self.budget_bps / 1e6:.3g} Mbit/s")
        return ", ".join(parts) or "no limit"


@dataclass(frozen=True)
class Overlay:
    links: tuple[tuple[int, int], ...]  # fast-path host pairs (x < y), in the order chosen
    intensity: FloatArray  # H×H upper-triangular host-pair intensity, bytes/s
    total: float  # all inter-host intensity
    covered: float  # on direct links (star pairs included)


def host_intensity(problem: Problem, placement: IntArray) -> FloatArray:
    h = problem.n_hosts
    t = problem.traffic
    a, b = placement[t.u], placement[t.v]
    keep = a != b
    lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    flat = np.bincount(lo * h + hi, weights=t.bytes_per_s[keep], minlength=h * h)
    return flat.reshape(h, h).astype(np.float64)


def select_links(problem: Problem, placement: IntArray,
                 constraint: CostConstraint = CostConstraint()) -> Overlay:
    intensity = host_intensity(problem, placement)
    total = float(intensity.sum())
    proxy = problem.proxy
    covered = float(intensity[proxy, :].sum() + intensity[:, proxy].sum())
    reach = problem.is_reachable()
    xs, ys = np.nonzero(intensity > 0)
    keep = (xs != proxy) & (ys != proxy) & reach[xs] & reach[ys]
    xs, ys = xs[keep], ys[keep]
    vals = intensity[xs, ys]
    order = np.lexsort((ys, xs, -vals))
    links: list[tuple[int, int]] = []
    carried_bps = 0.0
    for i in order:
        if constraint.share is not None and covered >= constraint.share * total:
            break
        if constraint.max_links is not None and len(links) >= constraint.max_links:
            break
        bits = 8.0 * float(vals[i])
        if constraint.budget_bps is not None and carried_bps + bits > constraint.budget_bps:
            break
        links.append((int(xs[i]), int(ys[i])))
        carried_bps += bits
        covered += float(vals[i])
    return Overlay(links=tuple(links), intensity=intensity, total=total, covered=covered)
