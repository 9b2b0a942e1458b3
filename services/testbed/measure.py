"""Measure what the testbed's underlay really gives between sites: RTT (ping) and
rate (iperf3), side by side with what the SPEC asked for.

Used by `vnet testbed measure SPEC` and the tests; figures, not verdicts, except
where a caller compares them with a tolerance.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import time
from dataclasses import dataclass

from services.testbed.testbed import Testbed

IPERF_PORT = 5201
_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


@dataclass(frozen=True)
class Rtt:
    min_ms: float
    avg_ms: float
    max_ms: float
    sent: int
    received: int


@dataclass(frozen=True)
class PairFigures:
    src_host: str
    dst_host: str
    delay_ms: float
    rate_mbit: float | None
    rtt: Rtt
    forward_mbit: float | None
    reverse_mbit: float | None


def ping(tb: Testbed, src_host: str, dst_host: str, count: int = 5,
         interval_s: float = 0.2) -> Rtt:
    """Ping dst's underlay IP from src's namespace; one warm-up ping is not counted."""
    ns, ip = tb.host_netns(src_host), tb.underlay_ip(dst_host)
    tb.run(ns, ["ping", "-c", "1", "-W", "5", ip], check=False)
    # -w: wait for `count` replies (a reply held up by a busy machine is late, not lost).
    deadline_s = int(count * interval_s + 10)
    r = tb.run(ns, ["ping", "-q", "-c", str(count), "-i", str(interval_s), "-w", str(deadline_s),
                    ip], check=False, timeout=deadline_s + 10)
    m = _RTT.search(r.stdout)
    sent = re.search(r"(\d+) packets transmitted, (\d+) received", r.stdout)
    if m is None or sent is None:
        raise RuntimeError(f"ping {src_host} -> {dst_host} ({ip}) failed: {r.stdout}{r.stderr}")
    return Rtt(float(m[1]), float(m[2]), float(m[3]), int(sent[1]), int(sent[2]))


def iperf(tb: Testbed, src_host: str, dst_host: str, seconds: float = 3.0,
          reverse: bool = False, streams: int = 1) -> float:
    """TCP throughput in Mbit/s from src to dst (dst to src with `reverse`), as received."""
    server = tb.popen(tb.host_netns(dst_host),
                      ["iperf3", "-s", "-1", "-p", str(IPERF_PORT), "--forceflush"],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert server.stdout is not None
    fd = server.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + 10.0
    while b"listening" not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            raise RuntimeError(f"iperf3 server on {dst_host} did not start: {seen!r}")
        seen += chunk
    argv = ["iperf3", "-c", tb.underlay_ip(dst_host), "-p", str(IPERF_PORT), "-t", str(seconds),
            "-P", str(streams), "--json"] + (["-R"] if reverse else [])
    r = tb.run(tb.host_netns(src_host), argv, check=False, timeout=seconds + 30)
    server.wait(timeout=10)
    try:
        return float(json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e6
    except (ValueError, KeyError) as e:
        raise RuntimeError(f"iperf3 {src_host} -> {dst_host} failed: {r.stdout[-500:]}") from e


def site_pairs(tb: Testbed) -> list[tuple[str, str, float, float | None]]:
    """Host pairs to measure, with what the SPEC promises between them: one pair per
    [[wan]] (the first host declared at each end), then one pair inside each site
    with two or more hosts (same segment: no delay, no shaping)."""
    by_site: dict[str, list[str]] = {}
    for h in tb.hosts():
        by_site.setdefault(tb.site_of(h), []).append(h)
    pairs: list[tuple[str, str, float, float | None]] = [
        (by_site[w.site_a][0], by_site[w.site_b][0], w.delay_ms, w.rate_mbit)
        for w in tb.plan.wans if w.site_a in by_site and w.site_b in by_site
    ]
    pairs += [(hosts[0], hosts[1], 0.0, None) for hosts in by_site.values() if len(hosts) > 1]
    return pairs


def measure(tb: Testbed, seconds: float = 3.0, rate: bool = True) -> list[PairFigures]:
    out = []
    for a, b, delay_ms, rate_mbit in site_pairs(tb):
        rtt = ping(tb, a, b)
        fwd = iperf(tb, a, b, seconds) if rate else None
        rev = iperf(tb, a, b, seconds, reverse=True) if rate else None
        out.append(PairFigures(a, b, delay_ms, rate_mbit, rtt, fwd, rev))
    return out
