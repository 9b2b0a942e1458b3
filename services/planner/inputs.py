"""What the planner knows, kept from the bus messages, and the problem built from it.

Each message is checked before it is kept (:class:`InputError` names the bad
value and nothing of the message is kept). The problem is built on demand
from the latest forwarder states (hosts, the proxy, guests and their MACs,
links), link measurements (throughput, latency, liveness: :mod:`estimate`)
and traffic (the last topology change or traffic matrix, whichever is newer).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from services.bus.pb import vnet_pb2 as pb
from services.planner import estimate
from services.planner.combine import Addressing
from services.planner.model import InputError, Problem, Traffic
from services.planner.network import NetworkHints, slots_under

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _check_number(what: str, value: float, upper: float = math.inf) -> None:
    if not math.isfinite(value) or value < 0 or value > upper:
        raise InputError(f"{what} is {value!r}: must be finite and within 0..{upper:g}")


@dataclass(frozen=True)
class InputSettings:
    default_capacity: int = 8  # guest slots per host (raised to what a host already holds)
    host_capacity: dict[str, int] = field(default_factory=dict)  # per-host overrides
    guest_memory_mb: float = 128.0  # memory a migration copies, per guest
    estimate: estimate.EstimateSettings = field(default_factory=estimate.EstimateSettings)
    network: NetworkHints | None = None  # the operator's sites and WAN rates
    # The overlay may add fast-path links: weigh a pair without one at its prior.
    direct_links: bool = False
    # A host whose forwarder's CPU quota throttled it in this share of the
    # scheduler's periods is loaded: it offers only the quota's share of its slots.
    loaded_throttle: float = 0.5


@dataclass(frozen=True)
class Built:
    problem: Problem
    addressing: Addressing
    unknown_nodes: tuple[str, ...]  # traffic nodes no forwarder reports as a guest


@dataclass
class WorldView:
    states: dict[str, pb.ForwarderState] = field(default_factory=dict)
    measurements: dict[str, pb.LinkMeasurements] = field(default_factory=dict)
    peaks: dict[tuple[str, str], float] = field(default_factory=dict)
    nodes: tuple[str, ...] = ()
    src: list[int] = field(default_factory=list)
    dst: list[int] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)
    change_id: int = 0

    # ------------------------------------------------------------ updates

    def on_state(self, state: pb.ForwarderState) -> None:
        if not state.host:
            raise InputError("forwarder state without a host name")
        seen: set[str] = set()
        for guest in state.guests:
            if not guest.id or guest.id in seen:
                raise InputError(f"state of {state.host!r}: guest id {guest.id!r} empty or"
                                 " repeated")
            if guest.mac and not _MAC.match(guest.mac.lower()):
                raise InputError(f"state of {state.host!r}: guest {guest.id!r} has MAC"
                                 f" {guest.mac!r}, not like 02:00:00:00:00:01")
            seen.add(guest.id)
        self.states[state.host] = state

    def on_links(self, report: pb.LinkMeasurements) -> None:
        if not report.host:
            raise InputError("link measurements without a host name")
        for m in report.links:
            where = f"link {m.link_id!r} of {report.host!r}"
            _check_number(f"{where} rtt_ms", m.rtt_ms)
            _check_number(f"{where} tx_bps", m.tx_bps)
            _check_number(f"{where} rx_bps", m.rx_bps)
            _check_number(f"{where} loss", m.loss, 1.0)
        self.measurements[report.host] = report
        for m in report.links:
            if m.peer_host == report.host:
                continue
            # No peer name: a star link, keyed (host, "") until the proxy is known.
            a, b = sorted((report.host, m.peer_host)) if m.peer_host else (report.host, "")
            self.peaks[(a, b)] = max(self.peaks.get((a, b), 0.0), m.tx_bps + m.rx_bps)

    def on_matrix(self, matrix: pb.TrafficMatrix) -> None:
        n = len(matrix.nodes)
        if len(matrix.values) != n * n:
            raise InputError(f"traffic matrix over {n} nodes has {len(matrix.values)} values,"
                             f" needs {n * n}")
        if len(set(matrix.nodes)) != n:
            raise InputError("traffic matrix names a node twice")
        values = np.asarray(matrix.values, dtype=np.float64).reshape(n, n) if n else \
            np.zeros((0, 0))
        if values.size and (not np.all(np.isfinite(values)) or np.any(values < 0)):
            bad = np.argwhere(~np.isfinite(values) | (values < 0))[0]
            raise InputError(f"traffic matrix value {float(values[tuple(bad)])!r} at"
                             f" {matrix.nodes[bad[0]]!r}->{matrix.nodes[bad[1]]!r} is not a"
                             " finite rate >= 0")
        s, d = np.nonzero(values)
        self.nodes = tuple(matrix.nodes)
        self.src, self.dst = s.tolist(), d.tolist()
        self.rate = values[s, d].tolist()

    def on_change(self, change: pb.TopologyChange) -> None:
        index = {name: i for i, name in enumerate(change.nodes)}
        if len(index) != len(change.nodes):
            raise InputError(f"topology change {change.change_id} names a node twice")
        src, dst, rate = [], [], []
        for e in change.edges:
            if e.src not in index or e.dst not in index:
                raise InputError(f"topology change {change.change_id}: edge {e.src!r}->"
                                 f"{e.dst!r} names a node not in its node list")
            _check_number(f"edge {e.src!r}->{e.dst!r} bytes_per_s", e.bytes_per_s)
            _check_number(f"edge {e.src!r}->{e.dst!r} weight", e.weight)
            # bytes/s when inference gives it, else the normalised weight
            src.append(index[e.src])
            dst.append(index[e.dst])
            rate.append(e.bytes_per_s if e.bytes_per_s > 0 else e.weight)
        self.nodes = tuple(change.nodes)
        self.src, self.dst, self.rate = src, dst, rate
        self.change_id = change.change_id

    def traffic(self) -> dict[tuple[str, str], float]:
        """The traffic in view, by (source, destination) node name."""
        return {(self.nodes[s], self.nodes[d]): r
                for s, d, r in zip(self.src, self.dst, self.rate, strict=True)}

    def cpu_share(self, host: str, settings: InputSettings) -> float | None:
        """A loaded host's share of its CPU: the operator's word (the network file),
        or the quota its forwarder finds binding (throttled in at least
        loaded_throttle of the scheduler's periods), whichever is less; None when
        neither says it is loaded."""
        shares = []
        if settings.network is not None and host in settings.network.cpu:
            shares.append(settings.network.cpu[host])
        cpu = self.states[host].cpu
        if cpu.quota_cores > 0 and cpu.throttled_share >= settings.loaded_throttle:
            shares.append(min(1.0, cpu.quota_cores))
        share = min(shares, default=None)
        return share if share is not None and share < 1.0 else None

    # ------------------------------------------------------------ the problem

    def build(self, settings: InputSettings = InputSettings()) -> Built:
        if not self.states:
            raise InputError("no forwarder state yet: no hosts to plan for")
        hosts = tuple(sorted(self.states))
        proxies = [i for i, h in enumerate(hosts) if self.states[h].is_proxy]
        if len(proxies) != 1:
            raise InputError(f"need exactly one proxy among the forwarder states, found"
                             f" {[hosts[i] for i in proxies]}")
        proxy = proxies[0]
        guests: list[str] = []
        macs: list[str] = []
        current: list[int] = []
        where: dict[str, int] = {}
        for h, host in enumerate(hosts):
            for g in self.states[host].guests:
                if g.id in where:
                    continue  # on two hosts mid-migration: the first host by name holds it
                where[g.id] = len(guests)
                guests.append(g.id)
                macs.append(g.mac.lower())
                current.append(h)
        by_name = dict(where)
        by_name.update({m: i for i, m in enumerate(macs) if m})
        unknown = sorted({self.nodes[i] for i in (*self.src, *self.dst)
                          if self.nodes[i] not in by_name and self.nodes[i].lower()
                          not in by_name})

        def resolve(i: int) -> int:
            name = self.nodes[i]
            return by_name.get(name, by_name.get(name.lower(), -1))

        pairs = [(resolve(s), resolve(d), r) for s, d, r in
                 zip(self.src, self.dst, self.rate, strict=True)]
        pairs = [p for p in pairs if p[0] >= 0 and p[1] >= 0]
        traffic = Traffic.from_edges(len(guests), [p[0] for p in pairs],
                                     [p[1] for p in pairs], [p[2] for p in pairs])
        if not len(traffic):
            detail = f" (nodes no forwarder reports: {', '.join(unknown[:10])})" if unknown \
                else ""
            raise InputError(f"no traffic between known guests: nothing to plan{detail}")
        peaks: dict[tuple[str, str], float] = {}
        for (a, b), rate in self.peaks.items():
            key = (a, b) if b else (min(a, hosts[proxy]), max(a, hosts[proxy]))
            peaks[key] = max(peaks.get(key, 0.0), rate)
        prior = settings.network.prior_bps(hosts) if settings.network else None
        thr, rtt, up = estimate.matrices(hosts, proxy, self.measurements, peaks,
                                         settings.estimate, prior, settings.direct_links)
        star: list[str] = [""] * len(hosts)
        fast: dict[tuple[int, int], str] = {}
        # A host is reachable unless its star link is reported down.
        reachable = np.ones(len(hosts), dtype=bool)
        index = {h: i for i, h in enumerate(hosts)}
        for h, host in enumerate(hosts):
            for link in self.states[host].links:
                # A non-proxy's star link may name no peer host: it is the proxy.
                peer = (proxy if not link.spec.peer_host and not link.spec.fast_path
                        else index.get(link.spec.peer_host))
                if peer is None or peer == h:
                    continue
                pair = (min(h, peer), max(h, peer))
                if not link.spec.fast_path:
                    other = h if peer == proxy else peer
                    star[other] = star[other] or link.spec.id
                    if not (link.up and up.get(pair, True)):
                        reachable[other] = False
                else:
                    fast[pair] = link.spec.id
        reachable[proxy] = True
        held = np.bincount(np.asarray(current, dtype=np.int64), minlength=len(hosts))
        slots = []
        for i, name in enumerate(hosts):
            base = settings.host_capacity.get(name, settings.default_capacity)
            share = self.cpu_share(name, settings)
            # A loaded host keeps only its share; any other is raised to what it holds.
            slots.append(slots_under(base, share) if share is not None
                         else max(base, int(held[i])))
        capacity = np.array(slots, dtype=np.int64)
        problem = Problem(
            hosts=hosts, guests=tuple(guests), traffic=traffic, throughput_bps=thr,
            capacity=capacity, current=np.asarray(current, dtype=np.int64), proxy=proxy,
            latency_ms=rtt,
            memory_bytes=np.full(len(guests), settings.guest_memory_mb * 2**20),
            reachable=reachable,
        )
        addressing = Addressing(
            guest_macs=tuple(macs),
            listen_addresses=tuple(self.states[h].listen_address for h in hosts),
            star_links=tuple(star), fast_links=fast,
        )
        return Built(problem, addressing, tuple(unknown))
