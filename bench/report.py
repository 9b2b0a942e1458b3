"""What a benchmark returns and the JSON document the runner writes from it.

A benchmark module returns a :class:`BenchOutput` (raw figures plus goals);
the runner adds the name, the time and the host so every results file reads
the same way (DESIGN.md, "Stable interfaces").
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Goal:
    """One target a benchmark checks; ``target`` reads like ">= 0.5"."""

    name: str
    target: str
    measured: float
    unit: str
    met: bool

    @classmethod
    def at_least(cls, name: str, minimum: float, measured: float, unit: str) -> Goal:
        return cls(name, f">= {minimum:g}", measured, unit, measured >= minimum)

    @classmethod
    def below(cls, name: str, limit: float, measured: float, unit: str) -> Goal:
        return cls(name, f"< {limit:g}", measured, unit, measured < limit)


@dataclass
class BenchOutput:
    """Raw figures (JSON-serialisable values) and the goals judged from them."""

    results: dict[str, object] = field(default_factory=dict)
    goals: list[Goal] = field(default_factory=list)


@dataclass(frozen=True)
class HostInfo:
    cpu: str
    cores: int
    kernel: str

    @classmethod
    def current(cls) -> HostInfo:
        return cls(_cpu_model(), os.cpu_count() or 0, platform.release())


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or "unknown"


def document(name: str, output: BenchOutput, when: datetime, host: HostInfo) -> dict[str, object]:
    """The results file's content, in DESIGN.md's form."""
    return {
        "benchmark": name,
        "when": when.isoformat(timespec="seconds"),
        "host": asdict(host),
        "results": output.results,
        "goals": [asdict(goal) for goal in output.goals],
    }


def write(doc: dict[str, object], directory: Path = RESULTS_DIR) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{doc['benchmark']}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def summary(name: str, goals: list[Goal]) -> str:
    """A table of the goals, one line each, with met / NOT MET."""
    if not goals:
        return f"{name}: no goals"
    rows = [("goal", "target", "measured", "unit", "")]
    rows += [
        (g.name, g.target, f"{g.measured:.4g}", g.unit, "met" if g.met else "NOT MET")
        for g in goals
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"== {name} =="]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[4]]).rstrip())
    met = sum(g.met for g in goals)
    lines.append(f"{met}/{len(goals)} goals met")
    return "\n".join(lines)
