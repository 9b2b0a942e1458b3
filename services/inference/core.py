"""The inference core: bus messages and the time in, messages to publish out.

No sockets, threads or clocks: :meth:`InferenceCore.handle` takes one checked
bus message and ``now``, :meth:`InferenceCore.tick` runs the pipeline at
``now`` and returns what to publish. The shell calls them; tests call them
with a fake clock.

What is an edge. Only pairs of known guests count: both MACs must belong to
guests some forwarder announced in its state. Broadcast and multicast
destinations are dropped (counted as ``pairs_group``), other unknown MACs too
(``pairs_unknown_mac``). ARP requests are broadcast, so they go; ARP replies
and other unicast ARP cannot be told apart from application frames, because
forwarders count by MAC pair, not by ethertype: they stay, as the tiny
intensity they are, and the pruning removes them with the rest of the
background chatter.

Who counts a frame. A frame crosses one to three forwarders (sender's,
maybe the proxy, receiver's); each may count it. The core takes a pair only
from the forwarder that hosts its source guest (per that forwarder's latest
state), so each frame is counted once whatever the route; other reports of
it are counted as ``pairs_not_local``. A migrated guest is counted by its new
host as soon as that host's state lists it; its old host's intervals age out
of the window as usual, so the node neither doubles nor vanishes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import numpy.typing as npt
from google.protobuf.message import Message

from services.bus import topics
from services.bus.counters import Counters
from services.bus.envelope import DEFAULT_MAX_MESSAGE_BYTES, BusMessage
from services.bus.pb import vnet_pb2 as pb
from services.inference import records, shapes
from services.inference.detect import (
    SHIFT,
    ChangeDetector,
    Edges,
    KeyArray,
    prune,
    prune_dense,
    undirected,
)
from services.inference.guests import GROUP, MALFORMED, UNKNOWN, GuestTable, natural_key
from services.inference.params import InferenceParams
from services.inference.window import (
    MAX_INTERVAL_S,
    MIN_INTERVAL_S,
    Accumulator,
    FloatArray,
    Interval,
    PairBatch,
    Run,
    valid_interval,
)


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: Message


@dataclass
class InferenceCore:
    params: InferenceParams
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    counters: Counters = field(default_factory=Counters)
    change_id: int = 0
    latest: pb.TopologyChange | None = None

    def __post_init__(self) -> None:
        self.guests = GuestTable(self.counters)
        self.acc = Accumulator(self.counters)
        self.detector = ChangeDetector(self.params)
        self._last_matrix_t = -math.inf
        self._change_sent_t = -math.inf
        self._first_counts_t: float | None = None

    # ------------------------------------------------------------ input

    def handle(self, msg: BusMessage, now: float) -> list[str]:
        """Take one bus message; returns what was wrong with it (each counted)."""
        return [error for _, error in self.handle_batch([(msg, now)])]

    def handle_batch(
        self, batch: Sequence[tuple[BusMessage, float]]
    ) -> list[tuple[BusMessage, str]]:
        """Take messages in arrival order, each with its arrival time.

        The same as :meth:`handle` on each in turn, but frame counts between
        two other messages are taken as one run (see window.py and
        records.py): the service hands in everything that came since the
        last update. Returns each problem with the message it was in.
        """
        errors: list[tuple[BusMessage, str]] = []
        run: list[tuple[BusMessage, float]] = []
        for msg, now in batch:
            if msg.kind == "frame_counts":
                run.append((msg, now))
                continue
            if run:
                errors += self._on_counts(run)
                run = []
            if msg.kind == "forwarder_state":
                assert isinstance(msg.payload, pb.ForwarderState)
                errors += [(msg, e) for e in self.on_state(msg.payload)]
            else:
                self.counters.inc("ignored_" + msg.kind)
        if run:
            errors += self._on_counts(run)
        return errors

    def on_state(self, state: pb.ForwarderState) -> list[str]:
        if not state.host:
            self.counters.inc("state_malformed")
            return ["forwarder state without a host name, dropped"]
        self.counters.inc("states")
        errors = self.guests.apply_state(state)
        self.acc.ensure(len(self.guests))
        return errors

    def _on_counts(self, run: list[tuple[BusMessage, float]]) -> list[tuple[BusMessage, str]]:
        """A run of frame counts: check, classify, then place each interval in order."""
        errors: list[list[str]] = [[] for _ in run]
        taken: list[int] = []  # positions in run of the counts with a host and an interval
        for k, (msg, _) in enumerate(run):
            fc = msg.payload
            assert isinstance(fc, pb.FrameCounts)
            if fc.host and valid_interval(fc.interval_s):
                taken.append(k)
                continue
            self.counters.inc("counts_malformed")
            errors[k].append(
                f"frame counts from host {fc.host!r} with interval_s={fc.interval_s!r}:"
                f" need a host and {MIN_INTERVAL_S} <= interval_s <= {MAX_INTERVAL_S}, dropped"
            )
        counts = [_counts_of(run[k][0]) for k in taken]
        recs, dropped = records.gather(counts, self.guests.codes)
        for d in dropped:
            self.counters.inc("pairs_malformed", d.records)
            errors[taken[d.item]].append(f"host {counts[d.item].host!r}: {d.why}, dropped")
        local = self._local(recs, counts, [errors[k] for k in taken])
        kept = np.flatnonzero(local)
        ends = np.cumsum(np.bincount(recs.item[kept], minlength=len(counts))).tolist()
        pairs = PairBatch(recs.src[kept], recs.dst[kept],
                          recs.bytes[kept].astype(np.float64),
                          recs.total_bytes[kept].astype(np.float64))
        intervals = []
        for j, fc in enumerate(counts):
            msg, now = run[taken[j]]
            intervals.append(Interval(fc.host, msg.instance, fc.interval_index, fc.interval_s,
                                      now, ends[j - 1] if j else 0, ends[j]))
        results = self.acc.add_intervals(Run(intervals, pairs), self.params.smoothing_window_s)
        placed = [j for j, error in enumerate(results) if error is None]
        for j, error in enumerate(results):
            if error is not None:
                errors[taken[j]].append(error)
        if placed:
            self.counters.inc("intervals", len(placed))
            if self._first_counts_t is None:
                self._first_counts_t = intervals[placed[0]].received
        return [(run[k][0], e) for k in range(len(run)) for e in errors[k]]

    def _local(
        self, recs: records.Records, counts: list[pb.FrameCounts], errors: list[list[str]]
    ) -> npt.NDArray[np.bool_]:
        """Which records are application traffic counted at the source's host.

        Counts each kind of record dropped; names the first malformed ones
        of each message in its errors.
        """
        src, dst, b, t = recs.src, recs.dst, recs.bytes, recs.total_bytes
        worst = np.minimum(src, dst)
        local: npt.NDArray[np.bool_] = (worst >= 0) & (b <= t) & (src != dst)
        good = np.flatnonzero(local)  # two guests, plausible bytes: local or not?
        if len(good):
            row = {h: r for r, h in enumerate(sorted({fc.host for fc in counts}))}
            masks = np.stack([self.guests.local_mask(h) for h in row])
            host_of = np.array([row[fc.host] for fc in counts], dtype=np.intp)
            local[good] = masks[host_of[recs.item[good]], src[good]]
        rest = np.flatnonzero((worst < 0) | (b > t) | (src == dst))
        w, s, d = worst[rest], src[rest], dst[rest]
        malformed = (w == MALFORMED) | (w >= 0)  # a guest pair can only fail on bytes
        group = (w == GROUP) | ((w == UNKNOWN) & ((s == GROUP) | (d == GROUP)))
        unknown = (w == UNKNOWN) & ~group
        n_local = int(np.count_nonzero(local))
        found = {
            "pairs_malformed": int(np.count_nonzero(malformed)),
            "pairs_group": int(np.count_nonzero(group)),
            "pairs_unknown_mac": int(np.count_nonzero(unknown)),
            "pairs_not_local": len(good) - n_local,
            "pairs": n_local,
        }
        for name, value in found.items():
            if value:
                self.counters.inc(name, value)
        if found["pairs_malformed"]:
            bad = rest[malformed]
            for j in np.unique(recs.item[bad]).tolist():
                mine = bad[recs.item[bad] == j]
                for k in mine[:3].tolist():
                    src_mac, dst_mac = recs.names(k)
                    errors[j].append(
                        f"host {counts[j].host!r} pair {src_mac!r}->{dst_mac!r}:"
                        f" bytes={b[k]:.0f} total_bytes={t[k]:.0f} (a pair needs two guest"
                        " MACs and bytes <= total), dropped"
                    )
                if len(mine) > 3:
                    errors[j].append(f"... and {len(mine) - 3} more malformed pairs")
        return local

    # ------------------------------------------------------------ pipeline

    def tick(self, now: float) -> list[Outgoing]:
        """Run filter → prune → detect → damp at now; returns what to publish.

        The latest topology.change is published again (same change_id) every
        ``change_republish_s``: PUB/SUB is lossy and a planner may start
        late, and a reader keys on change_id to tell repeats from changes.
        """
        self.acc.expire(now, self.params.smoothing_window_s)
        n = len(self.guests)
        fraction = self.params.prune_fraction
        all_keys, intensity = self.acc.undirected(n)
        edges = prune(all_keys, intensity, fraction)

        def recent() -> KeyArray:
            return prune(*undirected(*self.acc.recent_pairs(n)), fraction).keys

        out: list[Outgoing] = []
        report = self.detector.step(now, edges.keys, recent) if self._warm(now) else None
        self.counters.inc("updates")
        if report is not None:
            self.change_id += 1
            self.latest = self._change(report.keys, report.distance, all_keys, intensity)
            out.append(Outgoing(topics.TOPOLOGY_CHANGE, self.latest))
            self._change_sent_t = now
        elif self.latest is not None and self.params.change_republish_s > 0 and (
                now - self._change_sent_t >= self.params.change_republish_s):
            # Level-triggered: the same change again, for whoever missed it.
            out.append(Outgoing(topics.TOPOLOGY_CHANGE, self.latest))
            self._change_sent_t = now
            self.counters.inc("changes_republished")
        if now - self._last_matrix_t >= self.params.matrix_period_s:
            self._last_matrix_t = now
            matrix = self._matrix(all_keys)
            if matrix is not None:
                out.append(Outgoing(topics.TRAFFIC_MATRIX, matrix))
        return out

    def _warm(self, now: float) -> bool:
        """Detect only once every host with guests has counted, or a window has passed.

        Otherwise the first report would be whichever forwarders spoke first.
        """
        if self._first_counts_t is None:
            return False
        if now - self._first_counts_t >= self.params.smoothing_window_s:
            return True
        hosts = [h for h, guests in self.guests.host_guests.items() if guests]
        return all(h in self.acc.windows for h in hosts)

    def _change(
        self, keys: KeyArray, moved: float, all_keys: KeyArray, intensity: FloatArray
    ) -> pb.TopologyChange:
        strongest = float(intensity.max()) if len(intensity) else 0.0
        pos = np.searchsorted(all_keys, keys)
        found = (pos < len(all_keys)) & (all_keys[np.minimum(pos, len(all_keys) - 1)] == keys)
        bps = np.where(found, intensity[np.minimum(pos, max(len(all_keys) - 1, 0))], 0.0) \
            if len(all_keys) else np.zeros(len(keys))
        edges = Edges(keys, bps / strongest if strongest else bps, bps)
        return change_message(
            self.change_id, self.guests.ids, edges, self.params, moved
        )

    def _matrix(self, keys: KeyArray) -> pb.TrafficMatrix | None:
        """The directed matrix over the guests with traffic (keys: this update's pairs)."""
        seen = np.zeros(len(self.guests), dtype=bool)
        seen[keys >> SHIFT] = True
        seen[keys & ((1 << SHIFT) - 1)] = True
        active = np.flatnonzero(seen)
        if 8 * len(active) ** 2 + 64 * len(active) > self.max_message_bytes - 4096:
            self.counters.inc("matrix_too_large")
            return None
        order = sorted(active.tolist(), key=lambda i: natural_key(self.guests.ids[i]))
        sub = self.acc.among(order)
        return pb.TrafficMatrix(
            nodes=[self.guests.ids[i] for i in order],
            values=sub.ravel().tolist(),
            params=self.params.to_pb(),
        )


def change_message(
    change_id: int, ids: list[str], edges: Edges, params: InferenceParams, moved: float
) -> pb.TopologyChange:
    """A topology.change: nodes in natural order, edges (src before dst) strongest first."""
    rank = {name: r for r, name in enumerate(sorted(ids, key=natural_key))}
    rows = []
    for a, b, w, bps in zip(
        edges.src.tolist(), edges.dst.tolist(), edges.weight.tolist(),
        edges.bytes_per_s.tolist(), strict=True,
    ):
        x, y = ids[a], ids[b]
        if rank[x] > rank[y]:
            x, y = y, x
        rows.append((x, y, w, bps))
    rows.sort(key=lambda r: (-round(r[2], 9), rank[r[0]], rank[r[1]]))
    g = nx.Graph()
    g.add_edges_from((x, y) for x, y, _, _ in rows)
    return pb.TopologyChange(
        change_id=change_id,
        nodes=sorted(ids, key=natural_key),
        edges=[pb.Edge(src=x, dst=y, weight=w, bytes_per_s=bps) for x, y, w, bps in rows],
        params=params.to_pb(),
        shape=shapes.shape_name(g),
        distance=moved,
    )


def topology_from_matrix(matrix: pb.TrafficMatrix) -> pb.TopologyChange:
    """The pruned topology of a published matrix, with the params it carries."""
    n = len(matrix.nodes)
    if len(matrix.values) != n * n:
        raise ValueError(f"traffic matrix has {len(matrix.values)} values for {n} nodes")
    params = InferenceParams.from_pb(matrix.params)
    rates = np.asarray(matrix.values, dtype=np.float64).reshape(n, n)
    edges = prune_dense(rates, params.prune_fraction)
    return change_message(0, list(matrix.nodes), edges, params, 0.0)



def _counts_of(msg: BusMessage) -> pb.FrameCounts:
    assert isinstance(msg.payload, pb.FrameCounts)
    return msg.payload
