"""Show a topology or a matrix: terminal text, DOT, PNG (networkx + matplotlib).

Edge thickness follows intensity, like the original's pictures. Layouts are
seeded, so the same topology draws the same picture.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np

from services.bus.pb import vnet_pb2 as pb
from services.inference.shapes import names_in

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(size: tuple[float, float]) -> Figure:
    # Imported here: matplotlib takes half a second to load, and every
    # `vnet` command imports this module to register its sub-commands.
    # No pyplot: no global state; Agg renders the PNG.
    from matplotlib.figure import Figure

    return Figure(figsize=size)


def _bps(value: float) -> str:
    for unit, scale in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f} B/s"


def describe(change: pb.TopologyChange) -> str:
    """A terminal summary: shape, size, knobs and the edges strongest first."""
    active = {e.src for e in change.edges} | {e.dst for e in change.edges}
    p = change.params
    lines = [
        f"topology: {change.shape or 'unrecognised shape'}",
        f"guests: {len(active)} with edges of {len(change.nodes)} known;"
        f" edges: {len(change.edges)}",
        f"params: update {p.update_rate_hz:g} Hz, window {p.smoothing_window_s:g} s,"
        f" prune {p.prune_fraction:g}, threshold {p.detection_threshold:g},"
        f" damping {p.damping_s:g} s",
    ]
    if change.change_id:
        lines.append(f"change #{change.change_id}, distance {change.distance:.2f}")
    width = max((len(e.src) + len(e.dst) for e in change.edges), default=0) + 4
    for e in change.edges:
        lines.append(f"  {(e.src + ' -- ' + e.dst).ljust(width)} {e.weight:5.2f}"
                     f"  {_bps(e.bytes_per_s)}")
    return "\n".join(lines)


def _graph(change: pb.TopologyChange) -> nx.Graph:
    g = nx.Graph()
    active = {e.src for e in change.edges} | {e.dst for e in change.edges}
    g.add_nodes_from(n for n in change.nodes if n in active)
    for e in change.edges:
        g.add_edge(e.src, e.dst, weight=e.weight, bytes_per_s=e.bytes_per_s)
    return g


def to_dot(change: pb.TopologyChange) -> str:
    """Graphviz text; penwidth follows the edge weight."""
    lines = [
        "graph vnet {",
        f'  label="{change.shape or "unrecognised"}"; labelloc=t;',
        "  node [shape=circle];",
    ]
    for node in _graph(change).nodes:
        lines.append(f'  "{node}";')
    for e in change.edges:
        lines.append(
            f'  "{e.src}" -- "{e.dst}" [penwidth={0.5 + 4 * e.weight:.2f},'
            f' label="{_bps(e.bytes_per_s)}"];'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _layout(g: nx.Graph, shape: str) -> dict[str, tuple[float, float]]:
    names = names_in(shape)
    ordered = sorted(g.nodes, key=list(g.nodes).index)
    if names and names[0] in ("ring", "all-to-all"):
        if names[0] == "ring":
            ordered = list(nx.dfs_preorder_nodes(g, ordered[0]))
        return {v: (math.cos(2 * math.pi * k / len(ordered)), math.sin(2 * math.pi * k /
                len(ordered))) for k, v in enumerate(ordered)}
    pos = nx.spring_layout(g, seed=7, iterations=200)
    return {k: (float(v[0]), float(v[1])) for k, v in pos.items()}


def draw_topology(change: pb.TopologyChange, path: Path, title: str = "") -> None:
    g = _graph(change)
    fig = _figure((7, 7))
    ax = fig.subplots()
    if g.number_of_nodes():
        pos = _layout(g, change.shape)
        widths = [0.5 + 5 * g.edges[e]["weight"] for e in g.edges]
        nx.draw_networkx_edges(g, pos, ax=ax, width=widths, edge_color="#4a6fa5", alpha=0.8)
        nx.draw_networkx_nodes(g, pos, ax=ax, node_color="#f2c14e", node_size=360,
                               edgecolors="#333333")
        nx.draw_networkx_labels(g, pos, ax=ax, font_size=7)
    ax.set_title(title or f"{change.shape or 'unrecognised shape'}"
                 f" — {len(change.edges)} edges")
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def draw_matrix(matrix: pb.TrafficMatrix, path: Path) -> None:
    """Heatmap of bytes/s from row guest to column guest."""
    n = len(matrix.nodes)
    values = np.asarray(matrix.values, dtype=np.float64).reshape(n, n) if n else np.zeros((0, 0))
    fig = _figure((7, 6))
    ax = fig.subplots()
    image = ax.imshow(values / 1e6 if n else np.zeros((1, 1)), cmap="viridis",
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, label="MB/s (smoothed)")
    if 0 < n <= 40:
        ax.set_xticks(range(n), list(matrix.nodes), rotation=90, fontsize=7)
        ax.set_yticks(range(n), list(matrix.nodes), fontsize=7)
    ax.set_xlabel("destination guest")
    ax.set_ylabel("source guest")
    ax.set_title(f"traffic matrix, {n} active guests")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
