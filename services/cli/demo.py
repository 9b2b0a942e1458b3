"""`vnet demo`: bring up a broker and a sample service, tail them, stop.

The end-to-end issue turns this into the adapting testbed; for now it shows
the bus working: heartbeats from the broker and the sample service.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys

from services.bus import log as buslog
from services.bus import settings, tail
from services.bus.client import BusClient
from services.bus.launch import Launcher


def _demo(args: argparse.Namespace) -> int:
    buslog.configure("demo", args.host, json_lines=False, level=args.log_level)
    log = buslog.get()
    with Launcher() as launcher:
        quiet = None if args.verbose else subprocess.DEVNULL
        broker = launcher.start_broker(stderr=quiet)
        pub, sub = str(broker.info["pub"]), str(broker.info["sub"])
        log.info("broker up", pub=pub, sub=sub)
        bus = ["--bus-pub", pub, "--bus-sub", sub]
        launcher.start("sample", ["sample-service", "--host", args.host, *bus],
                       stderr=quiet)
        client = BusClient(settings.BusSettings(pub=pub, sub=sub), "demo", args.host)
        try:
            print(f"tailing the bus for {args.duration:.0f}s (vnet tail --bus-sub {sub}):",
                  flush=True)
            printed = tail.run(client, ["heartbeat."], [], sys.stdout, tail.as_text,
                               duration_s=args.duration)
        finally:
            client.close()
    print(f"demo done: {printed} heartbeats seen, broker and sample service stopped")
    return 0 if printed else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="start a broker and a sample service and tail them")
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--host", default=socket.gethostname())
    p.add_argument("--verbose", action="store_true", help="show the services' logs")
    p.set_defaults(func=_demo)
