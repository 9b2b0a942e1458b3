"""The evaluation's PNG plots: throughput against links added, speedup per scenario and mode."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MODE_ORDER = ("none", "overlay", "migration", "both", "oracle")


def links_plot(steps: list[Mapping[str, Any]], oracle_it_s: float | None, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = [s["links_up"] for s in steps]
    ax.plot(ks, [s["it_s"] for s in steps], "o-", label="Patterns all-to-all, noop planner")
    if oracle_it_s:
        ax.axhline(oracle_it_s, linestyle="--", color="grey", label="oracle (best static)")
    ax.set_xlabel("fast-path links up")
    ax.set_ylabel("iterations / s")
    ax.set_title("Throughput against fast-path links added (one cluster)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def modes_plot(rows: Mapping[str, Mapping[str, Mapping[str, Any]]], path: Path) -> None:
    """Grouped bars: speedup over no adaptation, one group per scenario."""
    keys = list(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(keys)), 4))
    width = 0.8 / len(MODE_ORDER)
    for i, mode in enumerate(MODE_ORDER):
        xs, ys = [], []
        for j, key in enumerate(keys):
            speedup = rows[key].get(mode, {}).get("speedup")
            if speedup is not None:
                xs.append(j + (i - len(MODE_ORDER) / 2 + 0.5) * width)
                ys.append(speedup)
        ax.bar(xs, ys, width, label=mode)
    ax.set_xticks(range(len(keys)), keys)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("speedup over no adaptation")
    ax.set_title("Application throughput per scenario and mode")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncols=len(MODE_ORDER))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
