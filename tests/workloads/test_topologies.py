"""The workload's topologies: pure edge generators, checked as graphs and against the
inference's shape namer (the test may import both; the workload never imports inference)."""

from __future__ import annotations

from collections import deque

import networkx as nx
import pytest

from services.inference import shapes
from services.workloads import topologies as topo

SIZES = (8, 12, 16, 32, 64)
# The inference's name for the graph each workload topology makes.
SHAPE_OF = {name: name for name in topo.TOPOLOGIES} | {topo.REDUCTION: "binary tree"}


def fits(topology: str, n: int) -> bool:
    try:
        topo.check(topology, n)
    except ValueError:
        return False
    return True


def connected(n: int, edges: frozenset[topo.Edge]) -> bool:
    adj: dict[int, set[int]] = {i: set() for i in range(n)}
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    seen, todo = {0}, deque([0])
    while todo:
        for nxt in adj[todo.popleft()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return len(seen) == n


CASES = [(t, n) for t in topo.TOPOLOGIES for n in range(2, 65) if fits(t, n)]


@pytest.mark.parametrize(("topology", "n"), CASES)
def test_edges_are_those_of_the_inference_reference_shape(topology: str, n: int) -> None:
    ref = shapes.generate(SHAPE_OF[topology], n)
    assert topo.edges(topology, n) == {(min(a, b), max(a, b)) for a, b in ref.edges}


@pytest.mark.parametrize(("topology", "n"), CASES)
def test_neighbours_are_symmetric_connected_and_of_the_expected_degree(
        topology: str, n: int) -> None:
    edges = topo.edges(topology, n)
    assert all(0 <= a < b < n for a, b in edges)
    nbrs = {r: topo.neighbours(topology, n, r) for r in range(n)}
    for r, mine in nbrs.items():
        assert r not in mine
        assert all(r in nbrs[o] for o in mine)
        assert list(mine) == sorted(set(mine))
    assert sum(len(m) for m in nbrs.values()) == 2 * len(edges)
    assert connected(n, edges)
    degrees = sorted(len(m) for m in nbrs.values())
    if topology == topo.LINE:
        assert degrees == [1, 1] + [2] * (n - 2)
    elif topology == topo.RING:
        assert degrees == [2] * n
    elif topology == topo.ALL_TO_ALL:
        assert degrees == [n - 1] * n
    elif topology == topo.HYPERCUBE:
        assert degrees == [n.bit_length() - 1] * n
    elif topology == topo.TORUS:
        sides = topo.torus_dims(n)
        assert degrees == [sum(1 if s == 2 else 2 for s in sides)] * n
    elif topology == topo.MESH:
        a, b = topo.mesh_dims(n)
        assert len(edges) == a * (b - 1) + b * (a - 1)
        assert degrees[0] == 2 and degrees[-1] <= 4
    else:  # binary tree, reduction
        assert len(edges) == n - 1
        assert degrees[-1] <= 3


@pytest.mark.parametrize(("topology", "n"), [(t, n) for t, n in CASES if n in SIZES])
def test_the_inference_names_the_workload_s_edges(topology: str, n: int) -> None:
    g = nx.Graph(list(topo.edges(topology, n)))
    assert SHAPE_OF[topology] in shapes.names_in(shapes.shape_name(g))


@pytest.mark.parametrize("n", range(2, 200))
def test_grid_dimensions_are_the_inference_s(n: int) -> None:
    for mine, theirs in ((topo.mesh_dims, shapes.mesh_dims), (topo.torus_dims, shapes.torus_dims)):
        try:
            expected = theirs(n)
        except ValueError:
            with pytest.raises(ValueError):
                mine(n)
        else:
            assert mine(n) == expected


def test_small_shapes_by_hand() -> None:
    assert topo.neighbours("ring", 4, 0) == (1, 3)
    assert topo.neighbours("line", 4, 0) == (1,)
    assert topo.neighbours("hypercube", 8, 5) == (1, 4, 7)
    assert topo.neighbours("tree", 7, 1) == (0, 3, 4)
    assert topo.neighbours("mesh", 6, 4) == (1, 3, 5)  # 2x3, row by row
    assert topo.tree_children(2, 6) == (5,)
    assert topo.tree_parent(6) == 2


@pytest.mark.parametrize(
    ("topology", "n", "message"),
    [
        ("hypercube", 12, "power of two"),
        ("mesh", 7, "composite"),
        ("torus", 6, "3-D torus needs"),
        ("ring", 2, "at least 3"),
        ("all", 1, "at least 2"),
        ("blob", 4, "unknown topology 'blob'"),
    ],
)
def test_impossible_topologies_are_refused_with_the_reason(
        topology: str, n: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        topo.check(topology, n)


def test_neighbours_refuses_a_rank_outside_the_run() -> None:
    with pytest.raises(ValueError, match=r"rank 4 is outside 0\.\.3"):
        topo.neighbours("ring", 4, 4)


def test_every_alias_names_a_topology() -> None:
    assert set(topo.ALIASES.values()) == set(topo.TOPOLOGIES)
    assert all(topo.canonical(t) == t for t in topo.TOPOLOGIES)
