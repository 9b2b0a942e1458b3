"""Run benchmarks: `python -m bench` runs all, `python -m bench NAME` runs one.

A benchmark is any bench/NAME.py other than the runner's own modules; it
defines ``main(progress: Callable[[str], None]) -> BenchOutput``. The runner
times it, writes bench/results/NAME.json and prints a table of its goals.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.report import BenchOutput, HostInfo, document, summary, write

BENCH_DIR = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"__init__", "__main__", "report", "migrator_qemu"}  # part of migrator


def available() -> list[str]:
    """Benchmark names: the bench/*.py files that are not the runner's."""
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if p.stem not in NOT_BENCHMARKS)


def _progress(name: str, started: float) -> Callable[[str], None]:
    def report(message: str) -> None:
        print(f"[{name} {time.monotonic() - started:6.1f}s] {message}", file=sys.stderr,
              flush=True)

    return report


def run_one(name: str) -> bool:
    """Run one benchmark, write its results; False if it failed to run."""
    started = time.monotonic()
    progress = _progress(name, started)
    progress("starting")
    when = datetime.now(UTC)
    try:
        module = importlib.import_module(f"bench.{name}")
        output = module.main(progress)
        if not isinstance(output, BenchOutput):
            raise TypeError(f"bench.{name}.main returned {type(output).__name__}, not BenchOutput")
    except Exception:
        traceback.print_exc()
        progress("FAILED: no results written")
        return False
    path = write(document(name, output, when, HostInfo.current()))
    progress(f"done, results in {path}")
    print(summary(name, output.goals), flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(names)})")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in names]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(names)}")
    failed = [name for name in (args.names or names) if not run_one(name)]
    if failed:
        print(f"benchmarks that failed to run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
