"""Synthetic planning problems for tests, benchmarks and demos (seeded).

Hosts sit at sites: fast inside a site (about 10 Gbit/s), slower between
sites (0.1–1 Gbit/s), host 0 is the proxy. Guests form applications of 3–12
guests each (ring, all-to-all or master-workers, log-normal intensities) with
a little traffic between applications; the current placement is random, as
before any adaptation.
"""

from __future__ import annotations

import math

import numpy as np

from services.planner.model import Problem, Traffic


def network(n_hosts: int, rng: np.random.Generator, hosts_per_site: int = 8) -> np.ndarray:
    site = np.arange(n_hosts) // hosts_per_site
    n_sites = int(site.max()) + 1
    between = rng.uniform(1e8, 1e9, size=(n_sites, n_sites))
    between = np.triu(between, 1) + np.triu(between, 1).T
    thr = between[site[:, None], site[None, :]]
    same = site[:, None] == site[None, :]
    inside = rng.uniform(8e9, 1.2e10, size=(n_hosts, n_hosts))
    inside = np.triu(inside, 1) + np.triu(inside, 1).T
    thr = np.where(same, inside, thr)
    np.fill_diagonal(thr, 0.0)
    return np.asarray(thr, dtype=np.float64)


def applications(n_guests: int, rng: np.random.Generator, cross: float = 0.05,
                 ) -> Traffic:
    src: list[int] = []
    dst: list[int] = []
    rate: list[float] = []
    start = 0
    while start < n_guests:
        size = min(int(rng.integers(3, 13)), n_guests - start)
        members = list(range(start, start + size))
        base = float(rng.lognormal(math.log(1e6), 1.0))
        shape = int(rng.integers(0, 3)) if size > 2 else 0
        if shape == 0:  # ring
            pairs = [(members[i], members[(i + 1) % size]) for i in range(size)]
        elif shape == 1:  # all-to-all
            pairs = [(a, b) for i, a in enumerate(members) for b in members[i + 1:]]
        else:  # master and workers
            pairs = [(members[0], b) for b in members[1:]]
        for a, b in pairs:
            if a != b:
                src.append(a)
                dst.append(b)
                rate.append(base * float(rng.lognormal(0.0, 0.5)))
        start += size
    n_cross = int(cross * len(src))
    if n_guests > 1 and n_cross:
        ends = rng.integers(0, n_guests, (2, n_cross))
        src += ends[0].tolist()
        dst += ends[1].tolist()
        rate += (rng.lognormal(math.log(1e5), 1.0, n_cross)).tolist()
    return Traffic.from_edges(n_guests, src, dst, rate)


def problem(n_guests: int, n_hosts: int, seed: int = 0, slack: float = 1.25,
            capacity: int | None = None) -> Problem:
    rng = np.random.default_rng(seed)
    slots = capacity if capacity is not None else max(1, math.ceil(slack * n_guests / n_hosts))
    cap = np.full(n_hosts, slots, dtype=np.int64)
    current = rng.permutation(np.repeat(np.arange(n_hosts), slots))[:n_guests]
    return Problem(
        hosts=tuple(f"h{i}" for i in range(n_hosts)),
        guests=tuple(f"g{i}" for i in range(n_guests)),
        traffic=applications(n_guests, rng),
        throughput_bps=network(n_hosts, rng),
        capacity=cap,
        current=current.astype(np.int64),
        proxy=0,
    )
