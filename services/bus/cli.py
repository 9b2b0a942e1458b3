"""Bus sub-commands of `vnet`: broker, keys, tail, sample-service."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
from pathlib import Path

from services.bus import keys, settings, tail
from services.bus import log as buslog
from services.bus.broker import Broker
from services.bus.client import BusClient
from services.bus.sample import serve


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _host_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default=socket.gethostname(), help="host name in sources and logs"
    )


def _broker(args: argparse.Namespace) -> int:
    buslog.configure("broker", args.host, json_lines=True, level=args.log_level)
    broker = Broker(settings.from_args(args), args.host)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # One line on stdout that launchers read to learn the bound endpoints.
    print(json.dumps({"ready": True, "pub": broker.pub_endpoint, "sub": broker.sub_endpoint}),
          flush=True)
    buslog.get().info("broker running", pub=broker.pub_endpoint, sub=broker.sub_endpoint)
    try:
        broker.run(lambda: stop, check=args.check)
    finally:
        broker.close()
    buslog.get().info("broker stopped", **broker.counters.snapshot())
    return 0


def _keys(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if args.keys_cmd == "init":
        keys.init(directory)
        print(f"broker key in {directory}/broker.key_secret")
    elif args.keys_cmd == "add":
        pair = keys.add(directory, args.name, control=args.control)
        role = "connect + control" if args.control else "connect"
        print(f"{args.name}: {pair.public.decode()} ({role})")
    else:
        allow = keys.AllowList.load(directory)
        for public, name in sorted(allow.allowed.items(), key=lambda kv: kv[1]):
            role = "control" if name in allow.control else "connect"
            print(f"{name:<24} {role:<8} {public.decode()}")
    return 0


def _tail(args: argparse.Namespace) -> int:
    buslog.configure("tail", args.host, json_lines=False, level=args.log_level)
    client = BusClient(settings.from_args(args), "tail", args.host)
    try:
        if args.rate is not None:
            if args.count is not None:
                raise SystemExit("vnet tail: --count counts printed messages; with --rate,"
                                 " stop with --duration")
            tail.run_rates(
                client,
                args.prefix,
                args.source,
                sys.stdout,
                tail.TopicRate.as_json if args.json else tail.TopicRate.as_text,
                every_s=args.rate,
                duration_s=args.duration,
            )
        else:
            tail.run(
                client,
                args.prefix,
                args.source,
                sys.stdout,
                tail.as_json if args.json else tail.as_text,
                count=args.count,
                duration_s=args.duration,
            )
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    return 0


def _sample(args: argparse.Namespace) -> int:
    buslog.configure(args.name, args.host, json_lines=True, level=args.log_level)
    asyncio.run(serve(settings.from_args(args), args.name, args.host))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("broker", help="run the bus broker (XSUB/XPUB proxy)")
    p.add_argument(
        "--check", action="store_true",
        help="inspect every message in Python (drop malformed or oversized ones, counted)"
        " instead of forwarding in libzmq's C proxy; always on with CURVE keys",
    )
    _host_arg(p)
    settings.add_arguments(p)
    p.set_defaults(func=_broker)

    p = sub.add_parser("keys", help="make CurveZMQ keys and allow-lists")
    ks = p.add_subparsers(dest="keys_cmd", required=True)
    k = ks.add_parser("init", help="create a keys directory with the broker's key pair")
    k.add_argument("dir")
    k = ks.add_parser("add", help="make a client key pair and allow-list it")
    k.add_argument("dir")
    k.add_argument("name")
    k.add_argument("--control", action="store_true",
                   help="may also publish plans, desired states and migration requests")
    k = ks.add_parser("list", help="list allow-listed clients")
    k.add_argument("dir")
    p.set_defaults(func=_keys)

    p = sub.add_parser("tail", help="follow bus messages live")
    p.add_argument("prefix", nargs="*", help="topic prefixes to follow (default: all)")
    p.add_argument("--source", action="append", default=[],
                   help="only messages from sources matching this glob (repeatable)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object a line: topic, source, seq, ts, body")
    p.add_argument("--rate", type=_positive_float, nargs="?", const=1.0, metavar="SECONDS",
                   help="print each topic's message rate every SECONDS (default 1)"
                   " instead of the messages")
    p.add_argument("--count", type=int, help="stop after this many messages")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    _host_arg(p)
    settings.add_arguments(p)
    p.set_defaults(func=_tail)

    p = sub.add_parser("sample-service", help="a service that only sends heartbeats")
    p.add_argument("--name", default="sample")
    _host_arg(p)
    settings.add_arguments(p)
    p.set_defaults(func=_sample)
