"""`vnet`: one entry point; each area registers its own sub-commands."""

from __future__ import annotations

import argparse
import sys

from services.bus import cli as bus_cli
from services.cli import demo
from services.forwarder import cli as forwarder_cli
from services.inference import cli as inference_cli
from services.migrator import cli as migrator_cli
from services.planner import cli as planner_cli
from services.testbed import cli as testbed_cli
from services.workloads import cli as workloads_cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vnet", description="self-optimising layer-2 virtual network")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)
    bus_cli.register(sub)
    demo.register(sub)
    testbed_cli.register(sub)
    forwarder_cli.register(sub)
    inference_cli.register(sub)
    planner_cli.register(sub)
    migrator_cli.register(sub)
    workloads_cli.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
