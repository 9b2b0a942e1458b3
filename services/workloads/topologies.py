"""Who talks to whom: the edges of each Patterns topology over ranks 0..n-1.

Pure functions, no graph library, so a worker in a guest imports little. The
shapes and node numbering are those of the inference's reference shapes
(services/inference/shapes.py, which the tests compare against): a 2-D mesh is
the squarest a x b grid numbered row by row, a 3-D torus the most cube-like
a x b x c (sides >= 2, wrapping), a hypercube joins ranks one bit apart, and a
binary tree hangs rank i under (i - 1) // 2. A reduction uses the binary tree's
edges; only its traffic differs (up to the root, then a release down).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

Edge = tuple[int, int]  # (a, b) with a < b

LINE = "bus/line"
RING = "ring"
MESH = "2-D mesh"
TORUS = "3-D torus"
HYPERCUBE = "hypercube"
TREE = "binary tree"
ALL_TO_ALL = "all-to-all"
REDUCTION = "reduction"
TOPOLOGIES = (LINE, RING, MESH, TORUS, HYPERCUBE, TREE, ALL_TO_ALL, REDUCTION)

# Command-line spellings without spaces or slashes.
ALIASES = {
    "bus": LINE, "line": LINE, "ring": RING, "mesh": MESH, "mesh2d": MESH, "torus": TORUS,
    "torus3d": TORUS, "hypercube": HYPERCUBE, "tree": TREE, "all-to-all": ALL_TO_ALL,
    "all": ALL_TO_ALL, "reduction": REDUCTION, "reduce": REDUCTION,
}


def canonical(name: str) -> str:
    """The topology's name in TOPOLOGIES, from itself or an alias."""
    if name in TOPOLOGIES:
        return name
    if name in ALIASES:
        return ALIASES[name]
    known = ", ".join(sorted({*TOPOLOGIES, *ALIASES}))
    raise ValueError(f"unknown topology {name!r}; known: {known}")


def mesh_dims(n: int) -> tuple[int, int]:
    """The squarest a x b = n with a >= 2 (a <= b): the inference's definition."""
    for a in range(math.isqrt(n), 1, -1):
        if n % a == 0:
            return a, n // a
    raise ValueError(f"a 2-D mesh needs a composite number of workers, not {n}")


def torus_dims(n: int) -> tuple[int, int, int]:
    """The most cube-like a x b x c = n with every side >= 2 (a <= b <= c)."""
    best: tuple[int, int, int] | None = None
    for a, b, c in _triples(n):
        if best is None or c - a < best[2] - best[0]:
            best = (a, b, c)
    if best is None:
        raise ValueError(f"a 3-D torus needs n = a*b*c with sides >= 2 (8, 12, 16, ...), not {n}")
    return best


def _triples(n: int) -> Iterator[tuple[int, int, int]]:
    for a in range(2, round(n ** (1 / 3)) + 2):
        if n % a:
            continue
        for b in range(a, math.isqrt(n // a) + 1):
            if (n // a) % b == 0 and n // a // b >= b:
                yield a, b, n // a // b


def _grid(sides: tuple[int, ...], periodic: bool) -> set[Edge]:
    """A grid numbered in mixed radix, the last side varying fastest."""
    strides = [math.prod(sides[i + 1:]) for i in range(len(sides))]
    out: set[Edge] = set()
    for coords in itertools.product(*(range(s) for s in sides)):
        here = sum(c * st for c, st in zip(coords, strides, strict=True))
        for axis, side in enumerate(sides):
            nxt = coords[axis] + 1
            if nxt == side:
                if not periodic or side < 3:  # a side of 2 wraps onto its own edge
                    continue
                nxt = 0
            there = here + (nxt - coords[axis]) * strides[axis]
            out.add((min(here, there), max(here, there)))
    return out


def check(topology: str, n: int) -> None:
    """Raise ValueError, saying what would fit, unless n workers can form the topology."""
    edges(topology, n)


def edges(topology: str, n: int) -> frozenset[Edge]:
    """The undirected edges of the topology over ranks 0..n-1, each as (low, high)."""
    topology = canonical(topology)
    if n < 2:
        raise ValueError(f"a {topology} needs at least 2 workers, not {n}")
    if topology == LINE:
        return frozenset((i, i + 1) for i in range(n - 1))
    if topology == RING:
        if n < 3:
            raise ValueError(f"a ring needs at least 3 workers, not {n} (use bus/line)")
        return frozenset((i, i + 1) for i in range(n - 1)) | {(0, n - 1)}
    if topology == MESH:
        return frozenset(_grid(mesh_dims(n), periodic=False))
    if topology == TORUS:
        a, b, c = torus_dims(n)
        # The inference's reference numbers the torus with its sides reversed.
        return frozenset(_grid((c, b, a), periodic=True))
    if topology == HYPERCUBE:
        d = n.bit_length() - 1
        if n != 1 << d:
            raise ValueError(f"a hypercube needs a power of two of workers, not {n}")
        return frozenset((i, i ^ (1 << k)) for i in range(n) for k in range(d) if not i >> k & 1)
    if topology == ALL_TO_ALL:
        return frozenset(itertools.combinations(range(n), 2))
    # TREE and REDUCTION
    return frozenset((tree_parent(i), i) for i in range(1, n))


def neighbours(topology: str, n: int, rank: int) -> tuple[int, ...]:
    """The ranks rank exchanges messages with, ascending."""
    if not 0 <= rank < n:
        raise ValueError(f"rank {rank} is outside 0..{n - 1}")
    out = {b if a == rank else a for a, b in edges(topology, n) if rank in (a, b)}
    return tuple(sorted(out))


def tree_parent(rank: int) -> int:
    """The binary tree's parent of rank (> 0)."""
    if rank <= 0:
        raise ValueError(f"rank {rank} has no parent: the root is 0")
    return (rank - 1) // 2


def tree_children(rank: int, n: int) -> tuple[int, ...]:
    return tuple(c for c in (2 * rank + 1, 2 * rank + 2) if c < n)
