"""Host-pair throughput and latency from what the forwarders measure.

A forwarder reports, per overlay link, the RTT of its keepalives, the loss of
keepalives and the rate it carried. Carried rate is only a lower bound of
what a link can do, so a link's throughput estimate is the larger of the
highest rate it was seen to carry and a TCP model of the path: the prior
``default_bps``, capped by window / RTT and, with loss, by Mathis' bound
(MSS / RTT · 1.22 / √loss). Both ends' estimates are averaged.

Host pairs with no overlay link yet have no measurement of their own: they
get the estimate of the path through the proxy (the smaller throughput of the
two star links, the sum of their RTTs), which is what their traffic gets
today and a lower bound of what a direct link would give. Once a fast-path
link joins them its own measurements replace it. No active probe is sent;
an operator's network description (:mod:`network`) gives each pair a prior
in place of ``default_bps``, and lets a pair without a link be weighed at
what a direct link would give when the overlay may add one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from services.bus.pb import vnet_pb2 as pb
from services.planner.model import FloatArray


@dataclass(frozen=True)
class EstimateSettings:
    default_bps: float = 1e9  # a link nothing else is known about
    window_bytes: float = 4 * 2**20  # TCP window that bounds rate at a given RTT
    mss_bytes: float = 1400.0


def link_bps(m: pb.LinkMeasurement, peak_bps: float, s: EstimateSettings,
             prior_bps: float | None = None) -> float:
    model = s.default_bps if prior_bps is None else prior_bps
    if m.rtt_ms > 0:
        rtt_s = m.rtt_ms / 1000.0
        model = min(model, s.window_bytes * 8.0 / rtt_s)
        if m.loss > 0:
            model = min(model, s.mss_bytes * 8.0 / rtt_s * 1.22 / math.sqrt(m.loss))
    return max(peak_bps, model)


def matrices(
    hosts: tuple[str, ...],
    proxy: int,
    measurements: dict[str, pb.LinkMeasurements],
    peaks: dict[tuple[str, str], float],
    settings: EstimateSettings = EstimateSettings(),
    prior_bps: FloatArray | None = None,
    direct: bool = False,
) -> tuple[FloatArray, FloatArray, dict[tuple[int, int], bool]]:
    """(throughput bps, latency ms, link up per measured pair) as H×H matrices.

    prior_bps (NaN where unknown, see :mod:`network`) replaces default_bps
    pair by pair. With direct, a pair that has no link yet but a prior gets
    the prior (a fast-path link may join it) instead of the path through the
    proxy: what the placement should weigh when the overlay may add links.
    """
    index = {h: i for i, h in enumerate(hosts)}
    n = len(hosts)
    thr_sum = np.zeros((n, n))
    rtt_sum = np.zeros((n, n))
    count = np.zeros((n, n))
    up: dict[tuple[int, int], bool] = {}
    prior = np.full((n, n), np.nan) if prior_bps is None else prior_bps
    has_prior = np.isfinite(prior)
    for host, report in sorted(measurements.items()):
        a = index.get(host)
        if a is None:
            continue
        for m in report.links:
            # A link without a peer host name is a non-proxy's star link.
            b = index.get(m.peer_host) if m.peer_host else proxy
            if b is None or b == a:
                continue
            pair = (min(a, b), max(a, b))
            up[pair] = up.get(pair, True) and m.up
            if not m.up:
                continue
            peak = peaks.get((hosts[pair[0]], hosts[pair[1]]), 0.0)
            bps = link_bps(m, peak, settings,
                           float(prior[a, b]) if has_prior[a, b] else None)
            for x, y in ((a, b), (b, a)):
                thr_sum[x, y] += bps
                rtt_sum[x, y] += m.rtt_ms
                count[x, y] += 1
    known = (count + count.T) > 0
    total = count + count.T
    with np.errstate(invalid="ignore", divide="ignore"):
        thr = np.where(known, (thr_sum + thr_sum.T) / total, 0.0)
        rtt = np.where(known, (rtt_sum + rtt_sum.T) / total, 0.0)
    unknown = np.where(has_prior, prior, settings.default_bps)
    star_thr = np.where(known[proxy], thr[proxy], unknown[proxy])
    star_rtt = np.where(known[proxy], rtt[proxy], 0.0)
    via_thr = np.minimum.outer(star_thr, star_thr)
    via_rtt = np.add.outer(star_rtt, star_rtt)
    if direct:
        via_thr = np.where(has_prior, prior, via_thr)
    thr = np.where(known, thr, via_thr)
    rtt = np.where(known, rtt, via_rtt)
    thr[proxy, :] = np.where(known[proxy], thr[proxy], unknown[proxy])
    thr[:, proxy] = thr[proxy, :]
    np.fill_diagonal(thr, 0.0)
    np.fill_diagonal(rtt, 0.0)
    return thr.astype(np.float64), rtt.astype(np.float64), up
