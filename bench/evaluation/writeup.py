"""eval.md: the evaluation's tables and what they mean, from the results document."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.evaluation.table import markdown
from bench.report import Goal

MODES = ("none", "overlay", "migration", "both", "oracle")

METHOD = """\
## How it was measured
- Testbed: hosts and guests are network namespaces on one machine (2 shared cores); sites are
  underlay segments, WAN links are shaped with HTB (rate) and the testbed's user-space delay relay.
  Each run builds a fresh testbed and a fresh vnet (broker, a forwarder per host, inference), so
  runs do not share state.
- Workload: Patterns (bulk-synchronous), one worker per guest; throughput is the workers' mean
  iterations per second from their `app.patterns.<guest>` reports.
- Modes: **none** = the star through the proxy, no planner; **overlay** = planner
  `--algorithm noop` (links and rules only); **migration** = planner `--max-links 0` plus the
  migrator; **both** = default planner plus migrator; the planner gets `--capacity 2
  --host-capacity proxy=0 --guest-memory-mb 16`, the migrator `--memory-mb 16` (each move copies
  16 MiB across the underlay first).
- **none** is a run of its own (14 s with no planner). In an adaptive run vnet (planner and
  migrator included) runs before the workload starts, as an operator's would; times count from
  the workload's start, its first report (workers report once a second). The final throughput
  is the last 12 s of 50 s (the oracle's: of 22 s). **t90** is the first time the 3-s moving
  throughput reaches 90% of the mode's own final figure, **oracle90** the first time it
  reaches 90% of the oracle's: the goal "90% of the oracle within 30 s of the workload
  starting". Moves across a 20 Mbit/s WAN that the application saturates take 13-20 s for two
  16 MiB guests; the memory copy uses two TCP connections per move, like QEMU's multifd.
- **oracle**: every placement of the guests on hosts under the same capacity, reduced by
  symmetry (hosts of one site are interchangeable, and so are guests under the topology's
  automorphisms), ranked by a crossing-cost model (Σ 1/rate over topology edges between hosts);
  the cheapest few are measured on a fresh testbed with the guests placed there and every
  direct link (noop planner, no share or link limit). In scenario 1 the links sweep's last step
  (the start placement with every link) is a candidate too. The best measured is the oracle.
- The planner is told what an operator knows (`vnet planner --network FILE`): each host's
  site and the WAN rates between sites. It still measures RTT, carried rate and loss on every
  link; the file only gives each host pair its prior rate. The loaded host is not named: its
  forwarder, inside the host's CPU quota, reports the quota and how often it throttled
  (`ForwarderState.cpu`), and the planner gives a host whose quota binds that share of its
  guest slots.
- A loaded host: its forwarder, a busy loop, and the workers of the guests it holds (following
  them as they move) share a cgroup CPU quota.
- The machine is shared with other work; figures vary from run to run by 10-30%.
"""

WEB_NOTE = """\
- Scenario 6's throughput is the web site's requests per second (wrk in the client guest,
  one AppReport per 1-s run), in the it/s column; a failed request (non-2xx, connect, read,
  write or time-out) counts as an application error. The loaded host's quota holds the image
  server's nginx (master and workers) while its guest is there, the busy loop and the
  host's forwarder.
"""


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def main_table(scenarios: Mapping[str, Mapping[str, Any]]) -> str:
    header = ["scenario", "mode", "it/s", "speedup", "of oracle", "t90 s", "oracle90 s",
              "links", "moves", "errors"]
    rows: list[list[object]] = []
    for key, s in scenarios.items():
        for mode in MODES:
            r = s["derived"].get(mode)
            if r is None:
                continue
            rows.append([key, mode, _num(r["it_s"]), _num(r["speedup"]),
                         _num(r["oracle_fraction"]), _num(r["t90_s"]),
                         _num(r.get("oracle90_s")), r["links"],
                         r["migrations"], r["errors"]])
    return markdown(header, rows)


def sweep_table(steps: list[Mapping[str, Any]]) -> str:
    rows: list[list[object]] = [[s["max_links"], s["links_up"], float(s["it_s"])] for s in steps]
    return markdown(["--max-links", "links up", "it/s"], rows)


def oracle_table(scenarios: Mapping[str, Mapping[str, Any]]) -> str:
    rows: list[list[object]] = []
    for key, s in scenarios.items():
        o = s.get("oracle")
        if not o:
            continue
        for c in o["measured"]:
            where = " ".join(c["placement"]) + (f" ({c['from']})" if c.get("from") else "")
            rows.append([key, where, float(c["it_s"]), o["candidates"]])
    return markdown(["scenario", "placement (g1 g2 ...)", "it/s", "candidates"], rows)


def goals_table(goals: list[Goal]) -> str:
    rows: list[list[object]] = [[g.name, g.target, g.measured, g.unit,
                                 "met" if g.met else "NOT MET"] for g in goals]
    return markdown(["goal", "target", "measured", "unit", ""], rows)


def render(doc: Mapping[str, Any], goals: list[Goal]) -> str:
    results = doc["results"]
    scenarios: Mapping[str, Mapping[str, Any]] = results["scenarios"]
    host = doc["host"]
    parts = [
        "# vnet evaluation: the original VNET/VADAPT experiments on the namespace testbed",
        "",
        f"Run {doc['when']} on {host['cpu']} ({host['cores']} cores), kernel {host['kernel']};"
        f" {results['elapsed_s']:.0f} s in all. Raw figures: `eval.json`; plots:"
        " `eval_links.png`, `eval_modes.png`. Re-run with `make eval`.",
        "",
        "## Throughput per scenario and mode",
        "speedup = over no adaptation (the star through the proxy); of oracle = fraction of"
        " the best static placement measured; t90 and oracle90 = seconds from the workload's"
        " start to 90% of the mode's final throughput and of the oracle's.",
        "",
        main_table(scenarios),
        "",
    ]
    for s in scenarios.values():
        parts += [f"### {s['title']}", "", f"Original: {s['claim']}.", "",
                  f"Topology {s['topology']}, guests on {' '.join(s['placement'])} at the start;"
                  f" {s['workload']}.", ""]
        for mode in ("overlay", "migration", "both"):
            run = s["runs"].get(mode)
            if run is None:
                continue
            moved = "; ".join(run["migrations"]) or "none"
            parts.append(f"- {mode}: moves {moved}; links up {run['links_max']};"
                         f" ends with {' '.join(run['final_placement'].values())}"
                         + (f"; errors: {'; '.join(run['errors'])}" if run["errors"] else ""))
        if s.get("sweep"):
            parts += ["", "Throughput against fast-path links (one running system, the noop"
                      " planner restarted with a larger `--max-links` each step):", "",
                      sweep_table(s["sweep"])]
        parts.append("")
    if any(s.get("oracle") for s in scenarios.values()):
        parts += ["## Oracle candidates measured", "", oracle_table(scenarios), ""]
    parts += ["## Goals", "", goals_table(goals), "",
              f"{sum(g.met for g in goals)}/{len(goals)} goals met.", "",
              "Speedup targets stand for the original's qualitative findings (large gains from"
              " links for all-to-all in one cluster, little for a bus across two clusters,"
              " migration ahead of links when communication dominates); its exact figures are"
              " not reproduced here.", "", METHOD, WEB_NOTE]
    return "\n".join(parts)
