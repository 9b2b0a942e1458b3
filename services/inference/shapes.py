"""Name the shape of a topology ("ring", "3-D torus 2x2x3", ...) and make them.

Recognition runs on the guests that have edges, cheapest checks first (node
and edge counts, degrees) before any isomorphism test, and lists every name
that fits in a fixed order, because some shapes are the same graph (a 2x2x2
torus is a 3-D hypercube; a ring of 4 is a 2x2 mesh). The generators are the
reference shapes the recogniser compares against; tests and benchmarks use
them to make traffic.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import networkx as nx
import numpy as np

# The order names are listed in when several fit.
SHAPES = (
    "bus/line", "ring", "2-D mesh", "3-D torus", "hypercube", "binary tree",
    "all-to-all", "star", "tiers",
)
SEPARATOR = " = "
# Above this many guests only line, ring, all-to-all and star are checked:
# the others need an eigen-decomposition (cubic) and an isomorphism search.
MAX_SYMMETRIC_CHECK = 2048


def _relabel(g: nx.Graph) -> nx.Graph:
    return nx.convert_node_labels_to_integers(g, ordering="sorted")


def mesh_dims(n: int) -> tuple[int, int]:
    """The squarest a x b = n with a >= 2 (a <= b)."""
    for a in range(math.isqrt(n), 1, -1):
        if n % a == 0:
            return a, n // a
    raise ValueError(f"a 2-D mesh needs a composite number of guests, not {n}")


def torus_dims(n: int) -> tuple[int, int, int]:
    """The most cube-like a x b x c = n with every side >= 2."""
    best: tuple[int, int, int] | None = None
    for a, b, c in _triples(n):
        if best is None or c - a < best[2] - best[0]:
            best = (a, b, c)
    if best is None:
        raise ValueError(f"a 3-D torus needs n = a*b*c with sides >= 2, not {n}")
    return best


def _triples(n: int) -> Iterator[tuple[int, int, int]]:
    for a in range(2, round(n ** (1 / 3)) + 2):
        if n % a:
            continue
        for b in range(a, math.isqrt(n // a) + 1):
            if (n // a) % b == 0 and n // a // b >= b:
                yield a, b, n // a // b


def tier_sizes(n: int) -> tuple[int, ...]:
    """Four tiers of near-equal size, each guest talking to every guest of the next.

    (Three fully joined tiers are the same graph as two: the outer tiers have
    the same neighbours, so a chain needs four to be told apart from K(a,b).)
    """
    if n < 4:
        raise ValueError(f"tiers need at least 4 guests, not {n}")
    return tuple(n // 4 + (1 if i < n % 4 else 0) for i in range(4))


def generate(shape: str, n: int) -> nx.Graph:
    """The reference graph of a shape over guests 0..n-1."""
    if shape == "bus/line":
        return nx.path_graph(n)
    if shape == "ring":
        return nx.cycle_graph(n)
    if shape == "2-D mesh":
        return _relabel(nx.grid_2d_graph(*mesh_dims(n)))
    if shape == "3-D torus":
        return _relabel(nx.grid_graph(dim=list(torus_dims(n)), periodic=True))
    if shape == "hypercube":
        d = n.bit_length() - 1
        if n != 1 << d:
            raise ValueError(f"a hypercube needs a power of two of guests, not {n}")
        return _relabel(nx.hypercube_graph(d))
    if shape == "binary tree":
        g = nx.Graph()
        g.add_nodes_from(range(n))
        g.add_edges_from((i, (i - 1) // 2) for i in range(1, n))
        return g
    if shape == "all-to-all":
        return nx.complete_graph(n)
    if shape == "star":
        return nx.star_graph(n - 1)
    if shape == "tiers":
        return _tiers(tier_sizes(n))
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _tiers(sizes: tuple[int, ...]) -> nx.Graph:
    g = nx.Graph()
    start = 0
    layers: list[range] = []
    for size in sizes:
        layers.append(range(start, start + size))
        start += size
    g.add_nodes_from(range(start))
    for upper, lower in itertools.pairwise(layers):
        g.add_edges_from((a, b) for a in upper for b in lower)
    return g


# ---------------------------------------------------------------- recognition


def recognise(g: nx.Graph) -> list[str]:
    """Every shape name that fits the graph's non-isolated part, in SHAPES order."""
    g = g.subgraph([v for v in g.nodes if g.degree(v) > 0]).copy()
    n, m = g.number_of_nodes(), g.number_of_edges()
    if n < 2 or not nx.is_connected(g):
        return []
    degrees = sorted(d for _, d in g.degree())
    is_tree = m == n - 1
    names: list[str] = []
    if is_tree and degrees[-1] <= 2:
        names.append("bus/line")
    if n >= 3 and degrees[0] == degrees[-1] == 2:
        names.append("ring")
    if n > MAX_SYMMETRIC_CHECK:
        return names + [name for name in _cheap_rest(n, m, degrees, is_tree)]
    spectrum = _Spectrum(g)
    names += _meshes(spectrum, n, m, degrees)
    names += _tori(spectrum, n, m, degrees)
    d = n.bit_length() - 1
    if (
        d >= 3 and n == 1 << d and degrees[0] == degrees[-1] == d
        and _iso(spectrum, nx.hypercube_graph(d), _product_spectrum(*[np.array([1.0, -1.0])] * d))
    ):
        names.append(f"hypercube {d}-D")
    # Trees: the tree-isomorphism algorithm (centre + canonical form), not a
    # VF2 search, whose time on trees depends on set iteration order.
    if is_tree and n >= 4 and degrees[-1] <= 3 and nx.isomorphism.tree_isomorphism(
        g, generate("binary tree", n)
    ):
        names.append("binary tree")
    if n >= 3 and m == n * (n - 1) // 2:
        names.append("all-to-all")
    if n >= 4 and is_tree and degrees[-1] == n - 1:
        names.append("star")
    elif n >= 4 and not names:
        tiers = _tier_sizes_of(g)
        if tiers is not None:
            names.append("tiers " + "-".join(str(s) for s in tiers))
    return names


def _cheap_rest(n: int, m: int, degrees: list[int], is_tree: bool) -> list[str]:
    if m == n * (n - 1) // 2:
        return ["all-to-all"]
    if is_tree and degrees[-1] == n - 1:
        return ["star"]
    return []


def shape_name(g: nx.Graph) -> str:
    """The published shape: every name that fits joined by " = ", or ""."""
    return SEPARATOR.join(recognise(g))


def names_in(shape: str) -> list[str]:
    """The bare names in a published shape ("3-D torus 2x2x3" -> "3-D torus")."""
    out: list[str] = []
    for part in shape.split(SEPARATOR) if shape else []:
        out.extend(name for name in SHAPES if part == name or part.startswith(name + " "))
    return out


class _Spectrum:
    """g's sorted adjacency eigenvalues, computed once and only if asked for."""

    def __init__(self, g: nx.Graph) -> None:
        self.g = g
        self._value: np.ndarray | None = None

    @property
    def value(self) -> np.ndarray:
        if self._value is None:
            self._value = np.sort(np.linalg.eigvalsh(nx.to_numpy_array(self.g)))
        return self._value


def _iso(g: _Spectrum, ref: nx.Graph, spectrum: np.ndarray) -> bool:
    """Isomorphism, after the cheap test: a known spectrum must match g's.

    Symmetric graphs that are not isomorphic can make VF2 search for a very
    long time; the adjacency spectrum tells them apart first (cospectral
    non-isomorphic graphs then still go to VF2, which decides).
    """
    if not np.allclose(g.value, spectrum, atol=1e-6):
        return False
    return bool(nx.vf2pp_is_isomorphic(g.g, ref))


def _cycle_eigs(n: int) -> np.ndarray:
    return 2 * np.cos(2 * np.pi * np.arange(n) / n) if n > 2 else np.array([1.0, -1.0])


def _path_eigs(n: int) -> np.ndarray:
    return 2 * np.cos(np.pi * np.arange(1, n + 1) / (n + 1))


def _product_spectrum(*factors: np.ndarray) -> np.ndarray:
    """Eigenvalues of a Cartesian product: every sum of one from each factor."""
    total = np.zeros(1)
    for f in factors:
        total = (total[:, None] + f[None, :]).ravel()
    return np.sort(total)


def _meshes(g: _Spectrum, n: int, m: int, degrees: list[int]) -> list[str]:
    out: list[str] = []
    for a in range(2, math.isqrt(n) + 1):
        b, rem = divmod(n, a)
        if rem or (a, b) == (2, 2):
            continue
        if m != a * (b - 1) + b * (a - 1) or degrees[0] != 2 or degrees[-1] > 4:
            continue
        if _iso(g, nx.grid_2d_graph(a, b), _product_spectrum(_path_eigs(a), _path_eigs(b))):
            out.append(f"2-D mesh {a}x{b}")
    return out


def _tori(g: _Spectrum, n: int, m: int, degrees: list[int]) -> list[str]:
    out: list[str] = []
    for dims in _triples(n):
        degree = sum(1 if side == 2 else 2 for side in dims)
        if degrees[0] != degree or degrees[-1] != degree or m != n * degree // 2:
            continue
        spectrum = _product_spectrum(*(_cycle_eigs(side) for side in dims))
        if _iso(g, nx.grid_graph(dim=list(dims), periodic=True), spectrum):
            out.append("3-D torus " + "x".join(str(s) for s in dims))
    return out


def _tier_sizes_of(g: nx.Graph) -> tuple[int, ...] | None:
    """Tiers: guests with the same neighbours form a tier; tiers in a chain, fully joined."""
    classes: dict[frozenset[object], list[object]] = {}
    for v in g.nodes:
        classes.setdefault(frozenset(g.neighbors(v)), []).append(v)
    groups = list(classes.values())
    if len(groups) < 2 or max(len(x) for x in groups) < 2:
        return None
    tier_of = {v: i for i, grp in enumerate(groups) for v in grp}
    q = nx.Graph()
    q.add_nodes_from(range(len(groups)))
    for a, b in g.edges:
        ta, tb = tier_of[a], tier_of[b]
        if ta == tb:
            return None
        q.add_edge(ta, tb)
    if not all(d <= 2 for _, d in q.degree()) or q.number_of_edges() != len(groups) - 1:
        return None
    for ta, tb in q.edges:
        joined = sum(1 for a in groups[ta] for b in groups[tb] if g.has_edge(a, b))
        if joined != len(groups[ta]) * len(groups[tb]):
            return None
    ends = [t for t, d in q.degree() if d == 1]
    order = list(nx.dfs_preorder_nodes(q, min(ends)))
    sizes = tuple(len(groups[t]) for t in order)
    return min(sizes, sizes[::-1])
