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
from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from google.protobuf.message import Message

from services.bus import topics
from services.bus.counters import Counters
from services.bus.envelope import DEFAULT_MAX_MESSAGE_BYTES, BusMessage
from services.bus.pb import vnet_pb2 as pb
from services.inference import shapes
from services.inference.detect import (
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
    IndexArray,
    PairBatch,
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
        self._first_counts_t: float | None = None

    # ------------------------------------------------------------ input

    def handle(self, msg: BusMessage, now: float) -> list[str]:
        """Take one bus message; returns what was wrong with it (each counted)."""
        if msg.kind == "forwarder_state":
            assert isinstance(msg.payload, pb.ForwarderState)
            return self.on_state(msg.payload)
        if msg.kind == "frame_counts":
            assert isinstance(msg.payload, pb.FrameCounts)
            return self.on_counts(msg.payload, msg.instance, now)
        self.counters.inc("ignored_" + msg.kind)
        return []

    def on_state(self, state: pb.ForwarderState) -> list[str]:
        if not state.host:
            self.counters.inc("state_malformed")
            return ["forwarder state without a host name, dropped"]
        self.counters.inc("states")
        errors = self.guests.apply_state(state)
        self.acc.ensure(len(self.guests))
        return errors

    def on_counts(self, fc: pb.FrameCounts, instance: int, now: float) -> list[str]:
        if not fc.host or not valid_interval(fc.interval_s):
            self.counters.inc("counts_malformed")
            return [
                f"frame counts from host {fc.host!r} with interval_s={fc.interval_s!r}:"
                f" need a host and {MIN_INTERVAL_S} <= interval_s <= {MAX_INTERVAL_S}, dropped"
            ]
        errors: list[str] = []
        batch = self._pairs(fc, errors)
        error = self.acc.add(
            fc.host, instance, fc.interval_index, fc.interval_s,
            self.params.smoothing_window_s, batch, now,
        )
        if error is not None:
            errors.append(error)
        else:
            self.counters.inc("intervals")
            if self._first_counts_t is None:
                self._first_counts_t = now
        return errors

    def _records(
        self, fc: pb.FrameCounts, errors: list[str]
    ) -> tuple[IndexArray, IndexArray, FloatArray, FloatArray, Callable[[int], tuple[str, str]]
               ] | None:
        """Guest codes, bytes and totals of every record, from either form.

        Columns decode as numpy arrays: a MAC is classified once per message,
        not once per record. Returns None when there are no records.
        """
        parts: list[tuple[IndexArray, IndexArray, FloatArray, FloatArray,
                          Callable[[int], tuple[str, str]]]] = []
        if fc.pairs:
            rows = [(p.src_mac, p.dst_mac, p.bytes, p.total_bytes) for p in fc.pairs]
            smacs, dmacs, nbytes, totals = (list(c) for c in zip(*rows, strict=True))
            parts.append((
                np.asarray(self.guests.codes(tuple(smacs)), dtype=np.intp),
                np.asarray(self.guests.codes(tuple(dmacs)), dtype=np.intp),
                np.asarray(nbytes, dtype=np.float64), np.asarray(totals, dtype=np.float64),
                lambda k: (smacs[k], dmacs[k]),
            ))
        cols = fc.columns
        if cols.src:
            macs = list(cols.macs)
            n = len(cols.src)
            lengths = {len(cols.dst), len(cols.bytes), len(cols.total_bytes)}
            sidx = np.array(cols.src, dtype=np.intp)
            didx = np.array(cols.dst, dtype=np.intp)
            if lengths != {n} or max(int(sidx.max()), int(didx.max())) >= len(macs):
                self.counters.inc("pairs_malformed", n)
                errors.append(
                    f"host {fc.host!r}: pair columns disagree ({n} sources, lengths"
                    f" {sorted(lengths)}, {len(macs)} MACs), dropped"
                )
            else:
                table = np.asarray(self.guests.codes(tuple(macs)), dtype=np.intp)
                parts.append((
                    table[sidx], table[didx],
                    np.array(cols.bytes, dtype=np.float64),
                    np.array(cols.total_bytes, dtype=np.float64),
                    lambda k: (macs[int(sidx[k])], macs[int(didx[k])]),
                ))
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        return (
            np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts]),
            _joined(parts[0][4], len(parts[0][0]), parts[1][4]),
        )

    def _pairs(self, fc: pb.FrameCounts, errors: list[str]) -> PairBatch:
        """The pairs that are application traffic counted at the source's host.

        Vectorised: one pass over the protobuf pairs, then numpy masks.
        """
        records = self._records(fc, errors)
        if records is None:
            return PairBatch.build([], [], [], [])
        src, dst, b, t, names = records
        worst = np.minimum(src, dst)
        malformed = (worst == MALFORMED) | ((worst >= 0) & ((b > t) | (src == dst)))
        group = (worst == GROUP) | ((worst == UNKNOWN) & ((src == GROUP) | (dst == GROUP)))
        unknown = (worst == UNKNOWN) & ~group
        good = (worst >= 0) & ~malformed
        local = good.copy()
        local[good] = self.guests.local_mask(fc.host)[src[good]]
        counts = {
            "pairs_malformed": int(malformed.sum()),
            "pairs_group": int(group.sum()),
            "pairs_unknown_mac": int(unknown.sum()),
            "pairs_not_local": int((good & ~local).sum()),
            "pairs": int(local.sum()),
        }
        for name, value in counts.items():
            if value:
                self.counters.inc(name, value)
        for k in np.flatnonzero(malformed)[:3].tolist():
            errors.append(
                f"host {fc.host!r} pair {names(k)[0]!r}->{names(k)[1]!r}: bytes={b[k]:.0f}"
                f" total_bytes={t[k]:.0f} (a pair needs two guest MACs and bytes <= total),"
                " dropped"
            )
        if counts["pairs_malformed"] > 3:
            errors.append(f"... and {counts['pairs_malformed'] - 3} more malformed pairs")
        return PairBatch(src[local], dst[local], b[local], t[local])

    # ------------------------------------------------------------ pipeline

    def tick(self, now: float) -> list[Outgoing]:
        """Run filter → prune → detect → damp at now; returns what to publish."""
        self.acc.expire(now, self.params.smoothing_window_s)
        n = len(self.guests)
        fraction = self.params.prune_fraction
        all_keys, intensity = undirected(*self.acc.pairs(n))
        edges = prune(all_keys, intensity, fraction)
        recent = prune(*undirected(*self.acc.pairs(n, recent=True)), fraction)
        out: list[Outgoing] = []
        report = self.detector.step(now, edges.keys, recent.keys) if self._warm(now) else None
        self.counters.inc("updates")
        if report is not None:
            self.change_id += 1
            self.latest = self._change(report.keys, report.distance, all_keys, intensity)
            out.append(Outgoing(topics.TOPOLOGY_CHANGE, self.latest))
        if now - self._last_matrix_t >= self.params.matrix_period_s:
            self._last_matrix_t = now
            matrix = self._matrix(self.acc.matrix(n))
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

    def _matrix(self, rates: FloatArray) -> pb.TrafficMatrix | None:
        active = np.flatnonzero(rates.any(axis=0) | rates.any(axis=1))
        order = sorted(active.tolist(), key=lambda i: natural_key(self.guests.ids[i]))
        if 8 * len(order) ** 2 + 64 * len(order) > self.max_message_bytes - 4096:
            self.counters.inc("matrix_too_large")
            return None
        sub = rates[np.ix_(order, order)]
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


def _joined(
    first: Callable[[int], tuple[str, str]], n_first: int, second: Callable[[int], tuple[str, str]]
) -> Callable[[int], tuple[str, str]]:
    """Name records of two concatenated parts by their index in the whole."""
    return lambda k: first(k) if k < n_first else second(k - n_first)
