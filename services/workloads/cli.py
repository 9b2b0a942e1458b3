"""`vnet patterns`: run one Patterns worker, or print a topology's neighbours."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from functools import partial
from typing import Any

from services.bus import log as buslog
from services.bus import settings as bus_settings
from services.bus.client import BusClient, BusTimeout
from services.workloads import report, topologies, webcli
from services.workloads.patterns import DEFAULT_PORT, PatternsParams
from services.workloads.worker import Worker

BUS_READY_S = 5.0


def _params(args: argparse.Namespace) -> PatternsParams:
    return PatternsParams(
        topology=args.topology, peers=tuple(p for p in args.peers.split(",") if p),
        rank=args.rank, guest=args.guest, msg_bytes=args.msg_bytes, compute_s=args.compute_s,
        compute_ops=args.compute_ops, ops_per_byte=args.ops_per_byte,
        duration_s=args.duration, iterations=args.iterations, port=args.port,
        report_interval_s=args.report_interval_s, connect_timeout_s=args.connect_timeout_s,
        drain_timeout_s=args.drain_timeout_s)


def _worker(args: argparse.Namespace) -> int:
    try:
        params = _params(args)
        params.check()
    except ValueError as exc:
        print(f"vnet patterns worker: {exc}", file=sys.stderr)
        return 2
    buslog.configure("patterns", params.guest, json_lines=True, level=args.log_level)
    log = buslog.get()
    client = None if args.no_bus else BusClient(bus_settings.from_args(args), "patterns",
                                                params.guest)
    try:
        if client is not None:
            _bus_round_trip(client, log, "bus not reachable yet; reports may be lost")
        topic = report.topic(report.APP, params.guest)
        publish = None if client is None else partial(client.publish, topic)
        worker = Worker(params, publish)
        worker.install_signal_handlers()
        summary = worker.run()
        if client is not None:
            # A round trip after the last report: it has passed the broker when
            # the probe behind it comes back, so closing now loses nothing.
            _bus_round_trip(client, log, "last report may not have reached the broker")
    finally:
        if client is not None:
            client.close()
    print(json.dumps(summary.as_dict()), flush=True)
    log.info("patterns worker finished", **summary.as_dict())
    return 1 if summary.error else 0


def _bus_round_trip(client: BusClient, log: Any, warning: str) -> None:
    try:
        asyncio.run(client.ready(BUS_READY_S))
    except BusTimeout as exc:
        log.warning(warning, error=str(exc))


def _edges(args: argparse.Namespace) -> int:
    try:
        for rank in range(args.workers):
            nbrs = topologies.neighbours(args.topology, args.workers, rank)
            print(f"{rank}: {' '.join(str(r) for r in nbrs)}")
    except ValueError as exc:
        print(f"vnet patterns edges: {exc}", file=sys.stderr)
        return 2
    return 0


def _topology_arg(p: argparse.ArgumentParser) -> None:
    names = ", ".join(sorted(topologies.ALIASES))
    p.add_argument("--topology", required=True, help=f"one of: {names}")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this area's sub-commands to `vnet`."""
    p = sub.add_parser("patterns", help="Patterns: a bulk-synchronous workload for guests")
    psub = p.add_subparsers(dest="patterns_command", required=True)

    w = psub.add_parser("worker", help="run one worker (one per guest, all with the same peers)")
    _topology_arg(w)
    w.add_argument("--rank", type=int, required=True, help="this worker's index in --peers")
    w.add_argument("--peers", required=True,
                   help="every worker's ip or ip:port by rank, comma-separated")
    w.add_argument("--guest", default="", help="name in reports and topics (default rank<N>)")
    w.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="TCP port for peers given without one")
    w.add_argument("--msg-bytes", type=int, default=65536,
                   help="payload of one message to one neighbour per iteration")
    w.add_argument("--compute-s", type=float, default=0.0,
                   help="busy CPU seconds per iteration (wall clock)")
    w.add_argument("--compute-ops", type=int, default=0,
                   help="fixed CPU work per iteration, in operations (slower on a loaded host)")
    w.add_argument("--ops-per-byte", type=float, default=0.0,
                   help="compute/communicate ratio: operations per byte sent per iteration")
    w.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: no limit)")
    w.add_argument("--iterations", type=int, default=0, help="iterations to run (0: no limit)")
    w.add_argument("--report-interval-s", type=float, default=1.0,
                   help="seconds between app reports on the bus")
    w.add_argument("--connect-timeout-s", type=float, default=30.0,
                   help="every neighbour connected within this, or the worker fails")
    w.add_argument("--drain-timeout-s", type=float, default=5.0,
                   help="at the end, wait this long for neighbours to finish too")
    w.add_argument("--no-bus", action="store_true", help="publish no reports")
    bus_settings.add_arguments(w)
    w.set_defaults(func=_worker)

    e = psub.add_parser("edges", help="print each rank's neighbours in a topology")
    _topology_arg(e)
    e.add_argument("--workers", "-n", type=int, required=True)
    e.set_defaults(func=_edges)
    webcli.register(sub)
