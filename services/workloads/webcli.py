"""`vnet web`: the web site's parts that run inside guests.

The launcher starts them as `python -m services.workloads.webcli ...` (the same
commands as `vnet web ...`): that skips importing every other area's CLI,
seconds on a busy 2-core machine, for each process started.
"""

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
from services.workloads import report, webconf
from services.workloads.webclient import LoadParams, run_load
from services.workloads.webconf import Catalogue

BUS_READY_S = 5.0


def _app(args: argparse.Namespace) -> int:
    # Here, not at the top: asyncpg loads only for the application server.
    from services.workloads.webapp import AppParams
    from services.workloads.webapp import run as run_app

    params = AppParams(
        listen=args.listen, db=args.db, guest=args.guest, pool_size=args.pool_size,
        db_timeout_s=args.db_timeout_s,
        catalogue=Catalogue(items=args.items, authors=args.authors, customers=args.customers,
                            orders=args.orders))
    try:
        params.catalogue.check()
    except ValueError as exc:
        print(f"vnet web app: {exc}", file=sys.stderr)
        return 2
    summary = asyncio.run(run_app(params))
    print(json.dumps(summary), file=sys.stderr, flush=True)
    return 0


def _client(args: argparse.Namespace) -> int:
    params = LoadParams(
        front=args.front, guest=args.guest, connections=args.connections,
        threads=args.threads, interval_s=args.interval_s, timeout_s=args.timeout_s,
        duration_s=args.duration, items=args.items, image_share=args.image_share,
        ready_timeout_s=args.ready_timeout_s)
    try:
        params.check()
    except ValueError as exc:
        print(f"vnet web client: {exc}", file=sys.stderr)
        return 2
    buslog.configure("web-client", params.guest, json_lines=True, level=args.log_level)
    log = buslog.get()
    client = None if args.no_bus else BusClient(bus_settings.from_args(args), "web",
                                                params.guest)

    async def main() -> int:
        if client is not None:
            await _round_trip(client, log, "bus not reachable yet; reports may be lost")
        publish = None if client is None else partial(
            client.publish, report.topic(webconf.APP, params.guest))
        totals = await run_load(params, publish,
                                lambda: print('{"ready": true}', flush=True))
        if client is not None:
            # The last report has passed the broker once a probe behind it is back.
            await _round_trip(client, log, "last report may not have reached the broker")
        print(json.dumps(totals.summary()), flush=True)
        log.info("web client finished", requests=totals.requests,
                 failed=totals.failed_total, error=totals.error)
        return 1 if totals.error else 0

    try:
        return asyncio.run(main())
    except TimeoutError as exc:
        print(f"vnet web client: {exc}", file=sys.stderr)
        return 1
    finally:
        if client is not None:
            client.close()


async def _round_trip(client: BusClient, log: Any, warning: str) -> None:
    try:
        await client.ready(BUS_READY_S)
    except BusTimeout as exc:
        log.warning(warning, error=str(exc))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `vnet web app` and `vnet web client`."""
    p = sub.add_parser("web", help="the multi-tier web site's parts (run inside guests)")
    _commands(p.add_subparsers(dest="web_command", required=True))


def main(argv: list[str] | None = None) -> int:
    """`python -m services.workloads.webcli app|client ...`, as `vnet web ...`."""
    p = argparse.ArgumentParser(prog="vnet web", description=__doc__)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _commands(p.add_subparsers(dest="web_command", required=True))
    args = p.parse_args(argv)
    return int(args.func(args))


def _commands(wsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    default = Catalogue()

    a = wsub.add_parser("app", help="the application server (HTTP from the front, SQL to db)")
    a.add_argument("--listen", required=True, help="ip:port to serve on")
    a.add_argument("--db", required=True, help="PostgreSQL's ip:port")
    a.add_argument("--guest", default="app", help="name in logs")
    a.add_argument("--items", type=int, default=default.items, help="items in the catalogue")
    a.add_argument("--authors", type=int, default=default.authors)
    a.add_argument("--customers", type=int, default=default.customers)
    a.add_argument("--orders", type=int, default=default.orders,
                   help="orders loaded at the start (the best-sellers history)")
    a.add_argument("--pool-size", type=int, default=8, help="database connections")
    a.add_argument("--db-timeout-s", type=float, default=30.0,
                   help="the database must answer within this at start")
    a.set_defaults(func=_app)

    c = wsub.add_parser("client", help="the load client: wrk runs, one AppReport each")
    c.add_argument("--front", required=True, help="the front's ip")
    c.add_argument("--guest", default="client", help="name in reports and topics")
    c.add_argument("--connections", type=int, default=8, help="wrk's open connections")
    c.add_argument("--threads", type=int, default=1, help="wrk's threads")
    c.add_argument("--interval-s", type=int, default=1,
                   help="whole seconds per wrk run and report")
    c.add_argument("--timeout-s", type=float, default=2.0,
                   help="an answer slower than this counts as a failed request")
    c.add_argument("--duration", type=float, default=0.0,
                   help="seconds of load (0: until SIGTERM)")
    c.add_argument("--items", type=int, default=default.items,
                   help="items in the catalogue (pages ask for 1..items)")
    c.add_argument("--image-share", type=float, default=0.3,
                   help="share of requests that are images, 0..1")
    c.add_argument("--ready-timeout-s", type=float, default=60.0,
                   help="the site must answer through the front within this")
    c.add_argument("--no-bus", action="store_true", help="publish no reports")
    bus_settings.add_arguments(c)
    c.set_defaults(func=_client)


if __name__ == "__main__":
    sys.exit(main())
