"""`python -m bench.evaluation [SCENARIO ...]` (`make eval`): run the scenarios, write the results.

Writes bench/results/eval.json (DESIGN.md's results form), eval.md (tables)
and eval_links.png, eval_modes.png. Progress lines go to stderr as it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.evaluation import analysis, oracle, plots, writeup
from bench.evaluation.cpuload import CpuLoad
from bench.evaluation.runner import Measurement, Timing, measure
from bench.evaluation.scenarios import CAPACITY, SCENARIOS, WEB_TIERS, Scenario, WebWorkload
from bench.report import RESULTS_DIR, BenchOutput, Goal, HostInfo, document, write

# Speedup targets: the original's findings (see eval.md). name -> (mode, min|max, value)
TARGETS: dict[str, dict[str, tuple[str, str, float]]] = {
    "links": {"links speed up all-to-all in one cluster": ("overlay", "min", 2.0)},
    "bus": {"links gain little for a bus across clusters": ("overlay", "max", 1.5)},
    "wan": {"adaptation speeds up a WAN spread": ("both", "min", 1.5)},
    "ratio-comm": {"migration helps when communication dominates": ("migration", "min", 1.5)},
    "loaded": {"migration moves work off a loaded host": ("migration", "min", 1.5)},
    "web": {"adaptation raises the web site's request rate": ("both", "min", 1.2)},
}


def _describe(scn: Scenario) -> str:
    w = scn.workload
    load = (f"; host {scn.loaded_host} loaded (CPU quota {scn.load_quota:g} of a core"
            " with a busy loop)" if scn.loaded_host else "")
    if isinstance(w, WebWorkload):
        where = ", ".join(f"{t} on {scn.placement[i]}" for i, t in enumerate(WEB_TIERS))
        return (f"web site: {where}; wrk with {w.settings.connections} connections,"
                f" {w.settings.image_share:.0%} images; throughput in requests/s{load}")
    compute = (f"{w.compute_s * 1000:g} ms compute" if w.compute_s
               else f"{w.compute_ops} ops compute")
    wans = ", ".join(f"{x.a}-{x.b} {x.rate_mbit:g} Mbit/s {x.delay_ms:g} ms" for x in scn.wans)
    return (f"{len(scn.placement)} workers, {w.msg_bytes // 1024} KiB messages, {compute};"
            f" WAN {wans or 'none'}{load}")


def run_scenario(scn: Scenario, timing: Timing, logs: Path,
                 progress: Any) -> dict[str, Any]:
    runs: dict[str, Measurement] = {}
    if scn.sweep_links:
        progress(f"{scn.key}: links sweep")
        runs["sweep"] = measure(scn, "sweep", logs / f"{scn.key}-sweep", timing, progress)
    for mode in scn.modes:
        progress(f"{scn.key}: {mode}")
        m = measure(scn, mode, logs / f"{scn.key}-{mode}", timing, progress)
        runs[mode] = m
        progress(f"{scn.key}: {mode}: {m.final_it_s:.1f} it/s, t90 {m.t90_s} s,"
                 f" moves {len(m.migrations)},"
                 f" links {m.links_max}, errors {len(m.errors)}")
    out: dict[str, Any] = {
        "title": scn.title, "claim": scn.claim, "topology": scn.workload.topology,
        "placement": list(scn.placement), "workload": _describe(scn),
        "runs": {k: m.as_dict() for k, m in runs.items()},
    }
    if scn.sweep_links:
        out["sweep"] = runs["sweep"].steps
    best: float | None = None
    if scn.oracle_limit:
        problem = oracle.OracleProblem(
            hosts=scn.host_names, capacity=dict.fromkeys(scn.host_names, CAPACITY),
            host_class=scn.host_class(), n_guests=len(scn.placement), edges=scn.edges())
        avoid = frozenset({scn.loaded_host} - {""})
        chosen, total = oracle.ranked(problem, scn.path_mbit(), scn.oracle_limit, avoid)
        measured: list[dict[str, Any]] = []
        for i, placement in enumerate(chosen):
            progress(f"{scn.key}: oracle candidate {i + 1}/{len(chosen)} of {total}:"
                     f" {' '.join(placement)}")
            m = measure(scn, "oracle", logs / f"{scn.key}-oracle{i}", timing, progress,
                        placement)
            progress(f"{scn.key}: oracle {' '.join(placement)}: {m.final_it_s:.1f} it/s")
            measured.append({"placement": list(placement), "it_s": round(m.final_it_s, 3),
                             "errors": m.errors, "links": m.links_max})
        if scn.sweep_links and out["sweep"]:
            # The sweep's last step is the start placement with every link: a candidate too.
            last = out["sweep"][-1]
            measured.append({"placement": list(scn.placement), "it_s": last["it_s"],
                             "errors": [], "links": last["links_up"], "from": "links sweep"})
        best_run = max(measured, key=lambda c: c["it_s"])
        best = float(best_run["it_s"])
        out["oracle"] = {"candidates": total, "measured": measured, "best_it_s": best,
                         "best_placement": best_run["placement"]}
    out["none_samples"] = analysis.baseline(out["runs"])
    out["derived"] = analysis.derive(out["runs"], best)
    return out


def _goals(results: dict[str, Any]) -> list[Goal]:
    goals: list[Goal] = []
    for key, s in results.items():
        goals += analysis.goals_for(key, s["derived"], TARGETS.get(key, {}))
    errors = sum(r["errors"] for s in results.values() for r in s["derived"].values())
    goals.append(Goal.below("application errors in adaptive runs", 1, float(errors), "errors"))
    return goals


def _outputs(doc: dict[str, Any], goals: list[Goal], out_dir: Path) -> None:
    """eval.md and the plots, from the results document."""
    results: dict[str, Any] = doc["results"]["scenarios"]
    (out_dir / "eval.md").write_text(writeup.render(doc, goals))
    derived = {k: s["derived"] for k, s in results.items()}
    if derived:
        plots.modes_plot(derived, out_dir / "eval_modes.png")
    links = results.get("links")
    if links and links.get("sweep"):
        plots.links_plot(links["sweep"], links.get("oracle", {}).get("best_it_s"),
                         out_dir / "eval_links.png")


def render(out_dir: Path) -> int:
    doc = json.loads((out_dir / "eval.json").read_text())
    goals = [Goal(**g) for g in doc["goals"]]
    _outputs(doc, goals, out_dir)
    print(f"rewrote {out_dir / 'eval.md'} and the plots from {out_dir / 'eval.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    keys = [s.key for s in SCENARIOS]
    parser = argparse.ArgumentParser(prog="python -m bench.evaluation", description=__doc__)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"run only these (default all: {', '.join(keys)})")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="where to write")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite eval.md and the plots from eval.json, measure nothing")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other scenarios of the eval.json there, replace only"
                             " those run now")
    args = parser.parse_args(argv)
    if args.render_only:
        return render(Path(args.results))
    unknown = [k for k in args.scenarios if k not in keys]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}: choose from {', '.join(keys)}")
    if os.geteuid() != 0:
        print("the evaluation builds network namespaces: run it as root", file=sys.stderr)
        return 2
    chosen = [s for s in SCENARIOS if not args.scenarios or s.key in args.scenarios]
    if any(s.loaded_host for s in chosen) and (why := CpuLoad.available()):
        print(f"cannot load a host: {why}", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C: every testbed, process and cgroup is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = time.monotonic()
    when = datetime.now(UTC)
    logs = Path(tempfile.mkdtemp(prefix="vnet-eval-"))

    def progress(message: str) -> None:
        print(f"[eval {time.monotonic() - started:6.1f}s] {message}", file=sys.stderr,
              flush=True)

    progress(f"scenarios {', '.join(s.key for s in chosen)}; logs in {logs}")
    results: dict[str, Any] = {}
    failed: list[str] = []
    out_dir = Path(args.results)
    if args.merge and (out_dir / "eval.json").exists():
        kept = json.loads((out_dir / "eval.json").read_text())["results"]["scenarios"]
        results = {k: v for k, v in kept.items() if k not in {s.key for s in chosen}}
        progress(f"merging into {out_dir / 'eval.json'}: keeping {', '.join(results)}")
    goals: list[Goal] = []
    for scn in chosen:
        try:
            results[scn.key] = run_scenario(scn, Timing(), logs, progress)
        except Exception as exc:  # one scenario's failure must not lose the others' figures
            progress(f"{scn.key}: FAILED: {exc!r}")
            failed.append(f"{scn.key}: {exc!r}")
        # Written after every scenario, so an interrupted run keeps what it measured.
        goals = _goals(results)
        output = BenchOutput(results={"scenarios": results, "failed": failed,
                                      "elapsed_s": round(time.monotonic() - started, 1),
                                      "timing": asdict(Timing()), "logs": str(logs)},
                             goals=goals)
        doc = document("eval", output, when, HostInfo.current())
        path = write(doc, out_dir)
        _outputs(doc, goals, out_dir)
    progress(f"done: {path}, {out_dir / 'eval.md'}")
    print(writeup.main_table(results))
    print(f"{sum(g.met for g in goals)}/{len(goals)} goals met"
          + (f"; failed scenarios: {'; '.join(failed)}" if failed else ""))
    print(json.dumps([asdict(g) for g in goals if not g.met]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
