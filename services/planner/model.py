"""The planning problem as numpy arrays indexed by guest and host ids.

Everything the algorithms see is here, checked once on construction so the
algorithms can trust it: traffic is an undirected edge list (guest pairs with
their summed intensity, bytes/s), the network is host-pair matrices
(throughput in bits/s, latency in ms), capacities are guest slots per host.
A value that makes no sense (NaN, negative, an index out of range) raises
:class:`InputError` naming it, and no plan is made from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

DEFAULT_MEMORY_BYTES = 128 * 2**20


class InputError(ValueError):
    """The planner's input is unusable; the message says which value and why."""


def _finite_nonneg(name: str, values: FloatArray) -> None:
    if values.size and not np.all(np.isfinite(values)):
        bad = np.argwhere(~np.isfinite(values))[0]
        raise InputError(f"{name} has a non-finite value at {tuple(int(i) for i in bad)}")
    if values.size and np.any(values < 0):
        bad = np.argwhere(values < 0)[0]
        raise InputError(
            f"{name} has a negative value {float(values[tuple(bad)]):g} at"
            f" {tuple(int(i) for i in bad)}"
        )


@dataclass(frozen=True)
class Traffic:
    """Undirected guest-pair intensities (bytes/s): u[k] < v[k], unique, rate > 0."""

    u: IntArray
    v: IntArray
    bytes_per_s: FloatArray

    @classmethod
    def from_edges(
        cls, n_guests: int, src: IntArray | list[int], dst: IntArray | list[int],
        bytes_per_s: FloatArray | list[float],
    ) -> Traffic:
        """Sum both directions and duplicates; drop self pairs and zeros."""
        s = np.asarray(src, dtype=np.int64)
        d = np.asarray(dst, dtype=np.int64)
        w = np.asarray(bytes_per_s, dtype=np.float64)
        if not (s.shape == d.shape == w.shape) or s.ndim != 1:
            raise InputError(f"traffic edges need equal 1-D src/dst/bytes_per_s, got {s.shape}"
                             f" {d.shape} {w.shape}")
        _finite_nonneg("traffic intensity", w)
        for name, idx in (("src", s), ("dst", d)):
            if idx.size and (idx.min() < 0 or idx.max() >= n_guests):
                raise InputError(f"traffic {name} guest index out of range 0..{n_guests - 1}")
        keep = (s != d) & (w > 0)
        s, d, w = s[keep], d[keep], w[keep]
        lo, hi = np.minimum(s, d), np.maximum(s, d)
        key = lo * max(n_guests, 1) + hi
        uniq, inverse = np.unique(key, return_inverse=True)
        summed = np.bincount(inverse, weights=w, minlength=uniq.size).astype(np.float64)
        n = max(n_guests, 1)
        return cls(u=(uniq // n).astype(np.int64), v=(uniq % n).astype(np.int64),
                   bytes_per_s=summed)

    @classmethod
    def empty(cls) -> Traffic:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))

    @property
    def total(self) -> float:
        return float(self.bytes_per_s.sum())

    def __len__(self) -> int:
        return int(self.u.size)


@dataclass(frozen=True)
class Adjacency:
    """CSR neighbour lists of the traffic graph: guest g's partners are
    nbr[ptr[g]:ptr[g+1]] with intensities w[...] (sorted by partner id)."""

    ptr: IntArray
    nbr: IntArray
    w: FloatArray

    @classmethod
    def of(cls, traffic: Traffic, n_guests: int) -> Adjacency:
        a = np.concatenate([traffic.u, traffic.v])
        b = np.concatenate([traffic.v, traffic.u])
        w = np.concatenate([traffic.bytes_per_s, traffic.bytes_per_s])
        order = np.lexsort((b, a))
        counts = np.bincount(a, minlength=n_guests)
        ptr = np.zeros(n_guests + 1, np.int64)
        np.cumsum(counts, out=ptr[1:])
        return cls(ptr=ptr, nbr=b[order].astype(np.int64), w=w[order].astype(np.float64))

    def of_guest(self, g: int) -> tuple[IntArray, FloatArray]:
        lo, hi = int(self.ptr[g]), int(self.ptr[g + 1])
        return self.nbr[lo:hi], self.w[lo:hi]

    def strength(self) -> FloatArray:
        """Total intensity per guest."""
        n = self.ptr.size - 1
        owner = np.repeat(np.arange(n), np.diff(self.ptr))
        return np.bincount(owner, weights=self.w, minlength=n).astype(np.float64)


@dataclass(frozen=True)
class Problem:
    """One planning problem. Host-pair matrices are symmetric H×H; the
    diagonal is ignored (same-host traffic costs nothing)."""

    hosts: tuple[str, ...]
    guests: tuple[str, ...]
    traffic: Traffic
    throughput_bps: FloatArray
    capacity: IntArray
    current: IntArray
    proxy: int = 0
    latency_ms: FloatArray | None = None
    memory_bytes: FloatArray | None = None
    reachable: BoolArray | None = None
    _adj: list[Adjacency] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        h, g = len(self.hosts), len(self.guests)
        if h == 0:
            raise InputError("no hosts: nothing to plan on")
        if len(set(self.hosts)) != h:
            raise InputError(f"duplicate host names in {list(self.hosts)[:10]}")
        if len(set(self.guests)) != g:
            raise InputError("duplicate guest ids")
        if self.throughput_bps.shape != (h, h):
            raise InputError(f"throughput matrix is {self.throughput_bps.shape}, need {(h, h)}")
        off = ~np.eye(h, dtype=bool)
        _finite_nonneg("host-pair throughput", self.throughput_bps[off])
        if h > 1 and np.any(self.throughput_bps[off] <= 0):
            x, y = np.argwhere((self.throughput_bps <= 0) & off)[0]
            raise InputError(f"throughput {self.hosts[x]}->{self.hosts[y]} is zero: give an"
                             " estimate, never 0")
        if self.latency_ms is not None:
            if self.latency_ms.shape != (h, h):
                raise InputError(f"latency matrix is {self.latency_ms.shape}, need {(h, h)}")
            _finite_nonneg("host-pair latency", self.latency_ms)
        if self.capacity.shape != (h,) or (h and self.capacity.min() < 0):
            raise InputError(f"capacity must be {h} non-negative slots, got {self.capacity}")
        if self.current.shape != (g,) or (g and (self.current.min() < 0
                                                 or self.current.max() >= h)):
            raise InputError(f"current placement must be {g} host indices in 0..{h - 1}")
        if not 0 <= self.proxy < h:
            raise InputError(f"proxy index {self.proxy} is not a host index 0..{h - 1}")
        if self.memory_bytes is not None:
            if self.memory_bytes.shape != (g,):
                raise InputError(f"memory sizes must be {g} values")
            _finite_nonneg("guest memory", self.memory_bytes)
        if self.reachable is not None and self.reachable.shape != (h,):
            raise InputError(f"reachable must be {h} flags")
        if len(self.traffic) and (self.traffic.v.max() >= g or self.traffic.u.min() < 0):
            raise InputError("traffic names a guest index outside the guests")
        if int(self.slots().sum()) + int((~self.movable()).sum()) < g:
            raise InputError(
                f"capacity of reachable hosts ({int(self.slots().sum())} slots) is less than"
                f" the {int(self.movable().sum())} movable guests"
            )

    @property
    def n_hosts(self) -> int:
        return len(self.hosts)

    @property
    def n_guests(self) -> int:
        return len(self.guests)

    def is_reachable(self) -> BoolArray:
        if self.reachable is None:
            return np.ones(self.n_hosts, dtype=bool)
        return self.reachable

    def slots(self) -> IntArray:
        """Capacity usable by planners: zero on unreachable hosts."""
        return np.where(self.is_reachable(), self.capacity, 0).astype(np.int64)

    def movable(self) -> BoolArray:
        """Guests on unreachable hosts stay where they are."""
        return self.is_reachable()[self.current]

    def memory(self) -> FloatArray:
        if self.memory_bytes is None:
            return np.full(self.n_guests, float(DEFAULT_MEMORY_BYTES))
        return self.memory_bytes

    def adjacency(self) -> Adjacency:
        if not self._adj:
            self._adj.append(Adjacency.of(self.traffic, self.n_guests))
        return self._adj[0]

    def cost_matrix(self) -> FloatArray:
        """Seconds of link time per byte between hosts (8 / throughput); 0 on the diagonal."""
        with np.errstate(divide="ignore"):
            c = 8.0 / self.throughput_bps
        np.fill_diagonal(c, 0.0)
        return c.astype(np.float64)

    def feasible(self, placement: IntArray) -> bool:
        """Fixed guests unmoved and no reachable host over capacity."""
        movable = self.movable()
        if np.any(placement[~movable] != self.current[~movable]):
            return False
        used = np.bincount(placement[movable], minlength=self.n_hosts)
        return bool(np.all(used <= self.slots()))
