"""Simulated forwarders: the FrameCounts and ForwarderState they would publish.

For tests and benchmarks of the inference without a testbed: guests spread
over hosts, an application topology with noisy per-edge rates, background
chatter between random guests, ARP (broadcast requests, unicast replies),
IPv6 multicast and a non-guest MAC, every frame counted by the forwarder of
its source and of its destination (as real forwarders do), cumulative totals,
lost intervals, forwarder restarts and guest migrations. The messages are
the same wire payloads real forwarders send; :meth:`Simulation.messages`
wraps them as checked bus messages for the core.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from services.bus.envelope import BusMessage
from services.bus.paircols import PairRow, to_columns
from services.bus.pb import vnet_pb2 as pb
from services.inference.core import InferenceCore, Outgoing

BROADCAST = "ff:ff:ff:ff:ff:ff"
IPV6_ALL_NODES = "33:33:00:00:00:01"
OUTSIDER = "02:ee:00:00:00:01"  # a MAC no forwarder announces (a LAN router, say)


def guest_mac(i: int) -> str:
    return f"02:00:00:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"


@dataclass
class Host:
    name: str
    instance: int
    interval_index: int = 0
    seq: int = 0
    phase_s: float = 0.0  # hosts' intervals are not aligned
    totals: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)


@dataclass
class Simulation:
    """n guests on n_hosts forwarders, talking in a topology given as a graph."""

    n_guests: int
    n_hosts: int = 4
    interval_s: float = 1.0
    rate_bps: float = 1e6  # per application edge and direction
    noise: float = 0.3  # each interval's bytes vary by up to ±noise
    chatter: float = 0.02  # background pairs send up to this fraction of rate_bps
    chatter_pairs: int = 0  # background pairs per interval (default: one per guest)
    columns: bool = True  # counts as PairColumns (as forwarders send) or PairCount records
    extras: bool = True  # ARP, multicast and an outsider MAC
    seed: int = 1

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.ids = [f"g{i + 1}" for i in range(self.n_guests)]
        self.macs = [guest_mac(i + 1) for i in range(self.n_guests)]
        self.host_of = [f"h{i % self.n_hosts + 1}" for i in range(self.n_guests)]
        self.hosts = {
            f"h{k + 1}": Host(f"h{k + 1}", self._instance(), phase_s=k * self.interval_s
                              / self.n_hosts)
            for k in range(self.n_hosts)
        }
        self.edges: list[tuple[int, int]] = []
        self.chatter_pairs = self.chatter_pairs or self.n_guests
        self._round: tuple[int, dict[tuple[int, int], int]] = (-1, {})

    def _instance(self) -> int:
        return int.from_bytes(os.urandom(8), "big") or 1

    def set_topology(self, graph: nx.Graph) -> None:
        """Application edges over guest indices 0..n-1 (both directions send)."""
        self.edges = sorted((min(a, b), max(a, b)) for a, b in graph.edges)
        self._round = (-1, {})

    # ------------------------------------------------------------ state

    def state(self, host: str) -> pb.ForwarderState:
        return pb.ForwarderState(
            host=host,
            guests=[
                pb.Guest(id=self.ids[i], mac=self.macs[i], kind=pb.ATTACHMENT_TAP)
                for i in range(self.n_guests)
                if self.host_of[i] == host
            ],
        )

    def migrate(self, guest: int, to_host: str) -> None:
        self.host_of[guest] = to_host

    def restart(self, host: str) -> None:
        """A new forwarder instance: interval index and totals start again."""
        h = self.hosts[host]
        h.instance = self._instance()
        h.interval_index = 0
        h.seq = 0
        h.totals.clear()

    # ------------------------------------------------------------ counting

    def _frames(self) -> dict[tuple[int, int], int]:
        """Bytes per (src guest, dst guest) in one interval; -1/-2/-3 for extras."""
        traffic: dict[tuple[int, int], int] = {}
        per_edge = self.rate_bps * self.interval_s
        for a, b in self.edges:
            for s, d in ((a, b), (b, a)):
                jitter = 1 + self.noise * (2 * self.rng.random() - 1)
                traffic[(s, d)] = int(per_edge * jitter)
        n = self.n_guests
        for _ in range(self.chatter_pairs):
            s, d = (int(x) for x in self.rng.choice(n, 2, replace=False))
            traffic[(s, d)] = traffic.get((s, d), 0) + int(
                per_edge * self.chatter * self.rng.random()
            )
        return traffic

    def interval(self, host: str) -> pb.FrameCounts:
        """The next counting interval of one forwarder (advances its index)."""
        h = self.hosts[host]
        h.interval_index += 1
        return self._counts(h, self._frames_for(host))

    def _frames_for(self, host: str) -> list[tuple[str, str, int]]:
        # Hosts in step share one round of traffic (both ends count the same frames).
        index = self.hosts[host].interval_index
        if self._round[0] != index:
            self._round = (index, self._frames())
        rows: list[tuple[str, str, int]] = []
        for (s, d), nbytes in self._round[1].items():
            if host in (self.host_of[s], self.host_of[d]) and nbytes > 0:
                rows.append((self.macs[s], self.macs[d], nbytes))
        if self.extras:
            for i in range(self.n_guests):
                if self.host_of[i] != host:
                    continue
                rows.append((self.macs[i], BROADCAST, 42 * 2))  # ARP requests
                rows.append((self.macs[i], IPV6_ALL_NODES, 90))  # IPv6 multicast
                rows.append((self.macs[i], OUTSIDER, int(self.rate_bps * self.interval_s)))
                peer = int(self.rng.integers(self.n_guests))
                if peer != i:
                    rows.append((self.macs[i], self.macs[peer], 42))  # unicast ARP reply
        return rows

    def _counts(self, h: Host, rows: Iterable[tuple[str, str, int]]) -> pb.FrameCounts:
        merged: dict[tuple[str, str], int] = {}
        for s, d, nbytes in rows:
            merged[(s, d)] = merged.get((s, d), 0) + nbytes
        records: list[PairRow] = []
        for (s, d), nbytes in sorted(merged.items()):
            frames = max(1, nbytes // 1400)
            tf, tb = h.totals.get((s, d), (0, 0))
            h.totals[(s, d)] = (tf + frames, tb + nbytes)
            records.append((s, d, frames, nbytes, tf + frames, tb + nbytes))
        fc = pb.FrameCounts(host=h.name, interval_index=h.interval_index,
                            interval_s=self.interval_s)
        if self.columns:
            fc.columns.CopyFrom(to_columns(records))
        else:
            fc.pairs.extend(pb.PairCount(src_mac=s, dst_mac=d, frames=f, bytes=b, total_frames=tf,
                                         total_bytes=tb) for s, d, f, b, tf, tb in records)
        return fc

    def message(self, host: str, payload: pb.FrameCounts | pb.ForwarderState) -> BusMessage:
        """Wrap a payload as the checked bus message the core receives."""
        h = self.hosts[host]
        h.seq += 1
        kind = "frame_counts" if isinstance(payload, pb.FrameCounts) else "forwarder_state"
        topic = ("frames." if kind == "frame_counts" else "state.") + host
        return BusMessage(topic, f"forwarder@{host}", h.instance, h.seq, 0.0, kind, payload, 0)

    # ------------------------------------------------------------ timeline

    def events(self, start_s: float, end_s: float) -> list[tuple[float, str]]:
        """(time, host) of every interval end in [start, end), in time order."""
        out: list[tuple[float, str]] = []
        for name, h in self.hosts.items():
            k = int(np.ceil((start_s - h.phase_s) / self.interval_s - 1e-9))
            t = h.phase_s + k * self.interval_s
            while t < end_s:
                if t >= start_s:
                    out.append((t, name))
                t += self.interval_s
        heapq.heapify(out)
        return [heapq.heappop(out) for _ in range(len(out))]


def run(
    core: InferenceCore,
    sim: Simulation,
    start_s: float,
    end_s: float,
    lose: Callable[[str, int], bool] | None = None,
    batch: bool = True,
) -> list[tuple[float, Outgoing]]:
    """Feed the core every host's state, then intervals and ticks in time order.

    ``lose(host, interval_index)`` says which intervals the bus loses. With
    batch (as the service does) the intervals that came since the last tick
    go in at the tick, in one batch with their arrival times; without, each
    goes in when it comes. Returns what the core published, with the
    (simulated) time.
    """
    for host in sim.hosts:
        core.handle(sim.message(host, sim.state(host)), start_s)
    period = core.params.update_period_s
    first_tick = int(np.ceil(start_s / period - 1e-9))
    timeline = [(t, 0, host) for t, host in sim.events(start_s, end_s)]
    k = first_tick
    while k * period < end_s:
        timeline.append((k * period, 1, ""))
        k += 1
    timeline.sort()
    out: list[tuple[float, Outgoing]] = []
    pending: list[tuple[BusMessage, float]] = []
    for t, what, host in timeline:
        if what == 0:
            counts = sim.interval(host)
            if lose is None or not lose(host, counts.interval_index):
                if batch:
                    pending.append((sim.message(host, counts), t))
                else:
                    core.handle(sim.message(host, counts), t)
        else:
            if pending:
                core.handle_batch(pending)
                pending = []
            out.extend((t, o) for o in core.tick(t))
    if pending:
        core.handle_batch(pending)
    return out
