"""What the operator knows of the network: sites, and the WAN between them.

Keepalives tell the planner a link's RTT, and carried traffic a lower bound
of its rate, but nothing says how fast a path is before traffic fills it (no
active probe is sent). An operator knows which hosts share a site and what
the WAN between sites gives; ``vnet planner --network FILE`` reads it and the
estimate uses it as the prior of each host pair: the WAN's rate between two
sites, ``site_rate_mbit`` inside one. Measurements still cap it (window and
loss bounds) and raise it (a higher rate seen carried).

The file is TOML in the testbed's spec form, so a testbed spec serves as it
is (only these keys are read; others are ignored; ``site_rate_mbit`` and
``cpu`` are the planner's own, which a testbed spec refuses)::

    site_rate_mbit = 1000          # optional, inside a site
    [[host]]
    name = "r1"
    site = "remote"
    [[wan]]
    sites = ["home", "remote"]
    rate_mbit = 20
    delay_ms = 5                   # (not read: keepalives measure RTT)

A host may also say ``cpu = 0.3``: guests there get only that share of its
CPU (competing load, a CPU limit). The host then offers that share of its
guest slots, rounded down, and the guests beyond them move elsewhere even
when that gains no communication (a loaded host slows a whole bulk-
synchronous application down to its pace).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.planner.model import FloatArray, InputError

DEFAULT_SITE_RATE_MBIT = 1000.0


@dataclass(frozen=True)
class NetworkHints:
    site_of: dict[str, str] = field(default_factory=dict)  # host -> site
    wan_mbit: dict[frozenset[str], float] = field(default_factory=dict)  # site pair -> rate
    site_rate_mbit: float = DEFAULT_SITE_RATE_MBIT
    cpu: dict[str, float] = field(default_factory=dict)  # host -> share of its CPU guests get

    @classmethod
    def load(cls, path: Path) -> NetworkHints:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InputError(f"network file {path}: {exc}") from exc
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "network") -> NetworkHints:
        site_of: dict[str, str] = {}
        cpu: dict[str, float] = {}
        for h in data.get("host", []):
            name, site = h.get("name"), h.get("site")
            if not isinstance(name, str) or not isinstance(site, str) or not name or not site:
                raise InputError(f"{where}: every [[host]] needs a name and a site, got {h!r}")
            site_of[name] = site
            if "cpu" in h:
                share = _positive(where, f"cpu of {name}", h["cpu"])
                if share > 1:
                    raise InputError(f"{where}: cpu of {name} is {share:g}: a share within"
                                     " 0..1 of the host's CPU")
                cpu[name] = share
        rates: dict[frozenset[str], float] = {}
        for w in data.get("wan", []):
            sites = w.get("sites")
            if not (isinstance(sites, list) and len(sites) == 2 and sites[0] != sites[1]
                    and all(isinstance(s, str) for s in sites)):
                raise InputError(f"{where}: [[wan]] sites must name two sites, got {sites!r}")
            rate = _positive(where, "rate_mbit", w.get("rate_mbit"))
            rates[frozenset(sites)] = rate
        site_rate = _positive(where, "site_rate_mbit",
                              data.get("site_rate_mbit", DEFAULT_SITE_RATE_MBIT))
        return cls(site_of=site_of, wan_mbit=rates, site_rate_mbit=site_rate, cpu=cpu)

    def slots(self, host: str, capacity: int) -> int:
        """Guest slots a host offers under its CPU share."""
        return slots_under(capacity, self.cpu.get(host, 1.0))

    def prior_bps(self, hosts: tuple[str, ...]) -> FloatArray:
        """H×H expected rate of a direct path (bits/s); NaN where nothing is known."""
        n = len(hosts)
        out = np.full((n, n), np.nan)
        for i, a in enumerate(hosts):
            for j, b in enumerate(hosts):
                sa, sb = self.site_of.get(a), self.site_of.get(b)
                if i == j or sa is None or sb is None:
                    continue
                if sa == sb:
                    out[i, j] = self.site_rate_mbit * 1e6
                elif (rate := self.wan_mbit.get(frozenset((sa, sb)))) is not None:
                    out[i, j] = rate * 1e6
        return out


def slots_under(capacity: int, cpu_share: float) -> int:
    """A loaded host's guest slots: its share of them, rounded down."""
    return math.floor(capacity * min(1.0, cpu_share) + 1e-9)


def _positive(where: str, key: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not (
            math.isfinite(value) and value > 0):
        raise InputError(f"{where}: {key} must be a number > 0, got {value!r}")
    return float(value)

