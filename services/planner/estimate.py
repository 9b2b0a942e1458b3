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
link joins them its own measurements replace it. No active probe is sent.
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


def link_bps(m: pb.LinkMeasurement, peak_bps: float, s: EstimateSettings) -> float:
    model = s.default_bps
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
) -> tuple[FloatArray, FloatArray, dict[tuple[int, int], bool]]:
    """(throughput bps, latency ms, link up per measured pair) as H×H matrices."""
    index = {h: i for i, h in enumerate(hosts)}
    n = len(hosts)
    thr_sum = np.zeros((n, n))
    rtt_sum = np.zeros((n, n))
    count = np.zeros((n, n))
    up: dict[tuple[int, int], bool] = {}
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
            for x, y in ((a, b), (b, a)):
                thr_sum[x, y] += link_bps(m, peak, settings)
                rtt_sum[x, y] += m.rtt_ms
                count[x, y] += 1
    known = (count + count.T) > 0
    total = count + count.T
    with np.errstate(invalid="ignore", divide="ignore"):
        thr = np.where(known, (thr_sum + thr_sum.T) / total, 0.0)
        rtt = np.where(known, (rtt_sum + rtt_sum.T) / total, 0.0)
    star_thr = np.where(known[proxy], thr[proxy], settings.default_bps)
    star_rtt = np.where(known[proxy], rtt[proxy], 0.0)
    via_thr = np.minimum.outer(star_thr, star_thr)
    via_rtt = np.add.outer(star_rtt, star_rtt)
    thr = np.where(known, thr, via_thr)
    rtt = np.where(known, rtt, via_rtt)
    thr[proxy, :] = np.where(known[proxy], thr[proxy], settings.default_bps)
    thr[:, proxy] = thr[proxy, :]
    np.fill_diagonal(thr, 0.0)
    np.fill_diagonal(rtt, 0.0)
    return thr.astype(np.float64), rtt.astype(np.float64), up
