"""From measurements to figures: the baseline, speedups, fraction of the oracle, goals.

Pure: takes the runner's Measurement dicts, returns plain dicts and Goals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.evaluation import series
from bench.report import Goal

T90_LIMIT_S = 30.0
ORACLE_SHARE = 0.9


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def baseline(runs: Mapping[str, Mapping[str, Any]]) -> list[float]:
    """No adaptation: the run without it, and the links sweep's first step."""
    none = runs.get("none")
    out = [float(none["final_it_s"])] if none and none.get("final_it_s") else []
    sweep = runs.get("sweep")
    if sweep and sweep["steps"]:
        out.append(float(sweep["steps"][0]["it_s"]))
    return out


def derive(runs: Mapping[str, Mapping[str, Any]], oracle_it_s: float | None
           ) -> dict[str, dict[str, Any]]:
    """Per mode: throughput, speedup over no adaptation, fraction of the oracle, errors,
    and times from the workload's start: t90 (to 90% of the mode's own final throughput)
    and oracle90 (to 90% of the oracle's)."""
    none = mean(baseline(runs))
    rows: dict[str, dict[str, Any]] = {
        "none": {"it_s": none, "speedup": 1.0 if none else None,
                 "oracle_fraction": ratio(none, oracle_it_s), "t90_s": None,
                 "oracle90_s": None, "errors": 0, "migrations": 0, "links": 0}}
    for mode in ("overlay", "migration", "both"):
        r = runs.get(mode)
        if r is None:
            continue
        line = [(float(t), float(v)) for t, v in r["timeline"]]
        rows[mode] = {"it_s": r["final_it_s"], "speedup": ratio(r["final_it_s"], none),
                      "oracle_fraction": ratio(r["final_it_s"], oracle_it_s),
                      "t90_s": r["t90_s"],
                      "oracle90_s": (series.time_to_fraction(line, oracle_it_s, ORACLE_SHARE)
                                     if oracle_it_s else None),
                      "errors": len(r["errors"]),
                      "migrations": len(r["migrations"]), "links": r["links_max"]}
    if oracle_it_s:
        rows["oracle"] = {"it_s": oracle_it_s, "speedup": ratio(oracle_it_s, none),
                          "oracle_fraction": 1.0, "t90_s": None, "oracle90_s": None,
                          "errors": 0, "migrations": 0, "links": None}
    return rows


def goals_for(key: str, rows: Mapping[str, Mapping[str, Any]],
              targets: Mapping[str, tuple[str, str, float]]) -> list[Goal]:
    """The scenario's goals: adaptation near the oracle and soon, plus its speedup targets.

    targets: goal name -> (mode, "min" | "max", value) on that mode's speedup.
    """
    out: list[Goal] = []
    both = rows.get("both", {})
    if rows.get("oracle") and both:
        frac = both.get("oracle_fraction") or 0.0
        out.append(Goal.at_least(f"{key}: both / oracle", ORACLE_SHARE, round(frac, 3),
                                 "ratio"))
        reached = both.get("oracle90_s")
        out.append(Goal(f"{key}: both reaches 90% of the oracle from the workload's start",
                        f"<= {T90_LIMIT_S:g}", float(reached) if reached is not None else -1.0,
                        "s", reached is not None and reached <= T90_LIMIT_S))
    if both:
        t90 = both.get("t90_s")
        measured = float(t90) if t90 is not None else -1.0
        out.append(Goal(f"{key}: both reaches 90% of its final throughput",
                        f"<= {T90_LIMIT_S:g}", measured, "s",
                        t90 is not None and t90 <= T90_LIMIT_S))
    for name, (mode, kind, value) in targets.items():
        speedup = rows.get(mode, {}).get("speedup")
        got = round(float(speedup), 3) if speedup is not None else 0.0
        if kind == "min":
            out.append(Goal.at_least(f"{key}: {name}", value, got, "x"))
        else:
            out.append(Goal.below(f"{key}: {name}", value, got, "x"))
    return out
