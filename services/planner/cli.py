"""`vnet planner` (the service) and `vnet plan --explain` (the latest plan in words)."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from pathlib import Path

from google.protobuf import json_format

from services.bus import log as buslog
from services.bus import settings as bus_settings
from services.bus import topics
from services.bus.client import BusClient
from services.bus.pb import vnet_pb2 as pb
from services.planner import registry
from services.planner.combine import PlanSettings
from services.planner.estimate import EstimateSettings
from services.planner.inputs import InputSettings
from services.planner.network import NetworkHints
from services.planner.overlay import CostConstraint
from services.planner.service import ServiceSettings, serve
from services.planner.stability import StabilitySettings


def _host_capacity(values: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in values:
        name, sep, slots = item.partition("=")
        if not sep or not name or not slots.isdigit():
            raise argparse.ArgumentTypeError(f"--host-capacity {item!r}: use HOST=SLOTS")
        out[name] = int(slots)
    return out


def settings_from_args(args: argparse.Namespace) -> ServiceSettings:
    constraint = CostConstraint(
        share=None if args.share < 0 else args.share,
        max_links=None if args.max_links < 0 else args.max_links,
        budget_bps=None if args.budget_mbps < 0 else args.budget_mbps * 1e6,
    )
    stability = StabilitySettings(
        horizon_s=args.horizon_s, margin=args.margin, min_dwell_s=args.min_dwell_s,
        no_return_s=args.no_return_s, enabled=not args.no_stability,
    )
    inputs = InputSettings(
        default_capacity=args.capacity, host_capacity=_host_capacity(args.host_capacity),
        guest_memory_mb=args.guest_memory_mb,
        estimate=EstimateSettings(default_bps=args.default_link_mbps * 1e6),
        network=NetworkHints.load(Path(args.network)) if args.network else None,
        direct_links=args.max_links != 0 and args.share != 0 and args.budget_mbps != 0,
    )
    return ServiceSettings(
        algorithm=args.algorithm, republish_s=args.republish_s,
        min_interval_s=args.min_interval_s, settle_s=args.settle_s,
        replan_traffic_change=args.replan_traffic_change, move_timeout_s=args.move_timeout_s,
        recheck_held_s=args.recheck_held_s,
        plan=PlanSettings(constraint=constraint, stability=stability), inputs=inputs,
    )


def _planner(args: argparse.Namespace) -> int:
    buslog.configure("planner", args.host, json_lines=True, level=args.log_level)
    try:
        settings = settings_from_args(args)
        registry.load(settings.algorithm)
    except (ValueError, KeyError, argparse.ArgumentTypeError) as exc:
        print(f"vnet planner: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(bus_settings.from_args(args), args.host, settings))
    return 0


async def _latest_plan(args: argparse.Namespace) -> pb.Plan | None:
    with BusClient(bus_settings.from_args(args), "plan-cli", args.host) as client:
        client.subscribe(topics.PLAN)
        await client.ready()
        msg = await client.recv(timeout=args.timeout)
        while msg is not None and msg.kind != "plan":
            msg = await client.recv(timeout=args.timeout)
        if msg is None:
            return None
        assert isinstance(msg.payload, pb.Plan)
        return msg.payload


def _plan(args: argparse.Namespace) -> int:
    buslog.configure("plan-cli", args.host, json_lines=False, level=args.log_level)
    plan = asyncio.run(_latest_plan(args))
    if plan is None:
        print(f"no plan on the bus within {args.timeout:g}s (is `vnet planner` running?)",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(json_format.MessageToDict(plan)))
    elif args.explain:
        print(plan.explanation)
    else:
        print(f"plan {plan.plan_id} by {plan.planner}: {len(plan.migrations)} migrations,"
              f" +{len(plan.links_add)} -{len(plan.links_remove)} links,"
              f" {len(plan.desired)} hosts (--explain for details)")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `vnet planner` and `vnet plan`."""
    d_constraint = CostConstraint()
    d_stab = StabilitySettings()
    d_inputs = InputSettings()
    d_service = ServiceSettings()
    p = sub.add_parser("planner", help="run the planner (VADAPT): placement, links, rules")
    p.add_argument("--algorithm", default=d_service.algorithm,
                   help="placement planner by name, built in:"
                        f" {', '.join(sorted(registry.BUILTIN))};"
                        f" more through the entry-point group {registry.ENTRY_POINT_GROUP!r}"
                        f" (default {d_service.algorithm})")
    p.add_argument("--share", type=float, default=d_constraint.share,
                   help="add fast-path links until this share of inter-host traffic is on"
                        " direct links; -1: no share limit (default %(default)s)")
    p.add_argument("--max-links", type=int, default=-1,
                   help="at most this many fast-path links; -1: no limit")
    p.add_argument("--budget-mbps", type=float, default=-1.0,
                   help="fast-path links may carry at most this many Mbit/s in all; -1: none")
    p.add_argument("--republish-s", type=float, default=d_service.republish_s,
                   help="send the plan and desired states again this often (default %(default)s)")
    p.add_argument("--min-interval-s", type=float, default=d_service.min_interval_s,
                   help="at most one plan per this many seconds (default %(default)s)")
    p.add_argument("--settle-s", type=float, default=d_service.settle_s,
                   help="after start, listen this long before the first plan, so every"
                        " forwarder's state is in (default %(default)s)")
    p.add_argument("--replan-traffic-change", type=float,
                   default=d_service.replan_traffic_change,
                   help="plan again when the traffic moved this far from what the last plan"
                        " saw (sum of |rate changes| / total); 0: only on topology changes"
                        " (default %(default)s)")
    p.add_argument("--recheck-held-s", type=float, default=d_service.recheck_held_s,
                   help="plan again this long after a plan that held moves back (their cost"
                        " above their gain, or a guest within its dwell); 0: never"
                        " (default %(default)s)")
    p.add_argument("--move-timeout-s", type=float, default=d_service.move_timeout_s,
                   help="no plan while this planner's moves are under way, for at most this"
                        " long per move (default %(default)s)")
    p.add_argument("--horizon-s", type=float, default=d_stab.horizon_s,
                   help="a move's gain counts over this long (default %(default)s)")
    p.add_argument("--margin", type=float, default=d_stab.margin,
                   help="gain x horizon must be this many times the move's time"
                        " (default %(default)s)")
    p.add_argument("--min-dwell-s", type=float, default=d_stab.min_dwell_s,
                   help="a guest moved this recently stays (default %(default)s)")
    p.add_argument("--no-return-s", type=float, default=d_stab.no_return_s,
                   help="a guest does not go back to a host it left this recently"
                        " (default %(default)s)")
    p.add_argument("--no-stability", action="store_true",
                   help="take every move the planner proposes (experiments)")
    p.add_argument("--capacity", type=int, default=d_inputs.default_capacity,
                   help="guest slots per host (default %(default)s)")
    p.add_argument("--host-capacity", action="append", default=[], metavar="HOST=SLOTS",
                   help="guest slots of one host (repeatable)")
    p.add_argument("--guest-memory-mb", type=float, default=d_inputs.guest_memory_mb,
                   help="memory a migration copies per guest (default %(default)s)")
    p.add_argument("--default-link-mbps", type=float,
                   default=d_inputs.estimate.default_bps / 1e6,
                   help="throughput assumed for a link nothing is known about"
                        " (default %(default)s)")
    p.add_argument("--network", metavar="FILE",
                   help="sites of the hosts and WAN rates between them (TOML in the testbed"
                        " spec's form: [[host]] name/site, [[wan]] sites/rate_mbit), the"
                        " prior of each host pair's rate")
    p.add_argument("--host", default=socket.gethostname(), help="host name in sources and logs")
    bus_settings.add_arguments(p)
    p.set_defaults(func=_planner)

    p = sub.add_parser("plan", help="show the latest plan from the bus")
    p.add_argument("--explain", action="store_true",
                   help="each link with the traffic it carries, each migration with its"
                        " estimated gain and cost")
    p.add_argument("--json", action="store_true", help="the plan message as JSON")
    p.add_argument("--timeout", type=float, default=12.0,
                   help="seconds to wait for the plan (it is republished every few seconds)")
    p.add_argument("--host", default=socket.gethostname(), help="host name in sources and logs")
    bus_settings.add_arguments(p)
    p.set_defaults(func=_plan)
