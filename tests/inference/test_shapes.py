"""Shape names: every reference shape is recognised, other graphs are not."""

from __future__ import annotations

import networkx as nx
import pytest

from services.inference import shapes

CASES = [
    (shape, n)
    for shape in shapes.SHAPES
    for n in (8, 12, 16, 32, 64)
    if not (shape == "hypercube" and n == 12)
]


@pytest.mark.parametrize(("shape", "n"), CASES)
def test_reference_shapes_are_recognised(shape: str, n: int) -> None:
    assert shape in shapes.names_in(shapes.shape_name(shapes.generate(shape, n)))


def test_impossible_shapes_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="power of two"):
        shapes.generate("hypercube", 12)
    with pytest.raises(ValueError, match="unknown shape"):
        shapes.generate("blob", 8)


def test_relabelled_shapes_are_recognised() -> None:
    g = shapes.generate("3-D torus", 12)
    mapping = {v: f"guest-{(7 * v) % 12}" for v in g.nodes}
    assert shapes.shape_name(nx.relabel_nodes(g, mapping)) == "3-D torus 2x2x3"


def test_shapes_that_are_the_same_graph_list_every_name() -> None:
    assert shapes.shape_name(shapes.generate("hypercube", 8)) == (
        "3-D torus 2x2x2 = hypercube 3-D"
    )


@pytest.mark.parametrize(
    "g",
    [
        nx.path_graph(8).copy(),
        nx.barbell_graph(4, 2),
        nx.petersen_graph(),
        nx.disjoint_union(nx.cycle_graph(4), nx.cycle_graph(4)),
    ],
)
def test_other_graphs_are_not_named_wrongly(g: nx.Graph) -> None:
    names = shapes.recognise(g)
    if nx.is_isomorphic(g, nx.path_graph(8)):
        assert names == ["bus/line"]
    else:
        assert names == []


def test_a_broken_ring_is_a_line_not_a_ring() -> None:
    g = shapes.generate("ring", 10)
    g.remove_edge(0, 1)
    assert shapes.recognise(g) == ["bus/line"]


def test_isolated_guests_are_ignored() -> None:
    g = shapes.generate("ring", 6)
    g.add_nodes_from([100, 101])
    assert shapes.recognise(g) == ["ring"]
