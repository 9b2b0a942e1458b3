"""`vnet migrator` (the service) and `vnet migrate GUEST HOST` (one move, followed)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import socket
import sys
import time

from google.protobuf import json_format

from services.bus import log as buslog
from services.bus import settings as bus_settings
from services.bus import topics
from services.bus.client import BusClient
from services.bus.pb import vnet_pb2 as pb
from services.migrator.core import PHASE_TOPIC
from services.migrator.dryrun import DryRunBackend
from services.migrator.model import Backend
from services.migrator.netns import NetnsBackend, NetnsHost, NetnsSettings
from services.migrator.service import MigratorSettings, serve

BACKENDS = ("netns", "qemu", "docker", "dry-run")


def make_backend(args: argparse.Namespace) -> Backend:
    if args.backend == "dry-run":
        return DryRunBackend()
    if args.backend == "netns":
        hosts = dict(NetnsHost.parse(h) for h in args.netns_host)
        if not hosts:
            raise ValueError("the netns backend needs --netns-host HOST=NETNS[@IP] per host")
        return NetnsBackend(NetnsSettings(hosts=hosts, memory_bytes=int(args.memory_mb * 2**20),
                                          copy_port=args.copy_port,
                                          copy_channels=args.copy_channels))
    if args.backend == "docker":
        dockerbe = importlib.import_module("services.migrator.dockerbe")
        segments = dict(dockerbe.DockerSettings.parse_segment(s) for s in args.docker_segment)
        docker_backend: Backend = dockerbe.DockerBackend(dockerbe.DockerSettings(
            segments=segments, project=args.docker_project))
        return docker_backend
    if args.backend == "qemu":
        # Imported on demand: its settings come from the same arguments.
        qemu = importlib.import_module("services.migrator.qemu")
        backend: Backend = qemu.backend_from_args(args)
        return backend
    raise ValueError(f"unknown backend {args.backend!r} (one of {', '.join(BACKENDS)})")


def _migrator(args: argparse.Namespace) -> int:
    buslog.configure("migrator", args.host, json_lines=True, level=args.log_level)
    try:
        backend = make_backend(args)
        settings = MigratorSettings(max_concurrent=args.max_concurrent,
                                    journal_dir=args.journal, follow_plans=not args.no_plans,
                                    recover_wait_s=args.recover_wait_s)
        if settings.max_concurrent < 1:
            raise ValueError("--max-concurrent must be at least 1")
        if settings.recover_wait_s < 0:
            raise ValueError("--recover-wait-s must not be negative")
    except (ValueError, ImportError) as exc:
        print(f"vnet migrator: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(bus_settings.from_args(args), args.host, settings, backend))
    return 0


def _describe(s: pb.MigrationStatus) -> str:
    phase = PHASE_TOPIC.get(s.phase, "?")
    if s.phase == pb.MIGRATION_PHASE_DONE:
        return (f"done: {s.guest_id} {s.from_host} -> {s.to_host} in {s.total_s:.3f}s,"
                f" downtime {s.downtime_s * 1000:.1f} ms, {s.bytes_moved} bytes moved")
    if s.phase == pb.MIGRATION_PHASE_FAILED:
        return f"failed: {s.error}"
    return f"{phase}: {s.detail} ({s.progress * 100:.0f}%)" if s.detail else phase


async def _follow(args: argparse.Namespace) -> int:
    mid = args.id or f"op-{args.guest}-{args.to_host}-{os.getpid()}-{int(time.time())}"
    with BusClient(bus_settings.from_args(args), "migrate-cli", args.host) as client:
        client.subscribe(topics.MIGRATION + ".")
        await client.ready()
        client.publish(topics.CONTROL_MIGRATE, pb.MigrationRequest(
            migration_id=mid, guest_id=args.guest, to_host=args.to_host,
            requested_by=f"operator@{args.host}"))
        deadline = time.monotonic() + args.timeout
        while (left := deadline - time.monotonic()) > 0:
            for msg in await client.recv_batch(timeout=left):
                s = msg.payload
                if not isinstance(s, pb.MigrationStatus) or s.migration_id != mid:
                    continue
                print(json.dumps(json_format.MessageToDict(s)) if args.json else _describe(s),
                      flush=True)
                if s.phase in (pb.MIGRATION_PHASE_DONE, pb.MIGRATION_PHASE_FAILED):
                    return 0 if s.phase == pb.MIGRATION_PHASE_DONE else 1
    print(f"no outcome for {mid} within {args.timeout:g}s (is `vnet migrator` running?)",
          file=sys.stderr)
    return 1


def _migrate(args: argparse.Namespace) -> int:
    buslog.configure("migrate-cli", args.host, json_lines=False, level=args.log_level)
    return asyncio.run(_follow(args))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `vnet migrator` and `vnet migrate`."""
    d = MigratorSettings()
    p = sub.add_parser("migrator", help="run the migrator: moves guests between hosts")
    p.add_argument("--backend", choices=BACKENDS, default="netns",
                   help="how guests move (default %(default)s)")
    p.add_argument("--netns-host", action="append", default=[], metavar="HOST=NETNS[@IP]",
                   help="netns backend: a host's namespace and underlay address (repeat)")
    p.add_argument("--memory-mb", type=float, default=0.0,
                   help="netns backend: copy this much 'guest memory' across the underlay"
                        " before each switch, so moves take as long as a VM's (default 0)")
    p.add_argument("--copy-port", type=int, default=7400,
                   help="netns backend: first TCP port for memory copies (default 7400)")
    p.add_argument("--copy-channels", type=int, default=2,
                   help="netns backend: TCP connections per memory copy, like QEMU's multifd"
                        " channels (default %(default)s)")
    p.add_argument("--qemu-dir", default="",
                   help="qemu backend: the VM directories (DIR/<vm>/vm.json and one folder per"
                        " QEMU process with its sockets)")
    p.add_argument("--qemu-downtime-ms", type=int, default=30,
                   help="qemu backend: QEMU's downtime limit for the switch-over"
                        " (default %(default)s)")
    p.add_argument("--qemu-max-bandwidth", type=float, default=0.0, metavar="MIB_S",
                   help="qemu backend: cap the migration at this many MiB/s; 0 = none"
                        " (default %(default)s)")
    p.add_argument("--docker-segment", action="append", default=[], metavar="HOST=NETWORK",
                   help="docker backend: a host's segment network (default: the compose"
                        " network seg-HOST of --docker-project) (repeat)")
    p.add_argument("--docker-project", default="",
                   help="docker backend: compose project of the guests, forwarders and"
                        " segments (default: this container's own)")
    p.add_argument("--max-concurrent", type=int, default=d.max_concurrent,
                   help="moves at once; more queue (default %(default)s)")
    p.add_argument("--journal", default=d.journal_dir,
                   help="directory of in-flight moves, rolled back after a crash"
                        " (default %(default)s)")
    p.add_argument("--recover-wait-s", type=float, default=d.recover_wait_s,
                   help="at start, gather forwarder states this long before rolling back"
                        " journalled moves; a request naming a host or guest not heard from"
                        " yet waits as long (default %(default)s)")
    p.add_argument("--no-plans", action="store_true",
                   help="ignore the planner's migrations; take operators' requests only")
    p.add_argument("--host", default=socket.gethostname(), help="host name in sources and logs")
    bus_settings.add_arguments(p)
    p.set_defaults(func=_migrator)

    m = sub.add_parser("migrate", help="move one guest to a host and follow the move")
    m.add_argument("guest", help="guest id")
    m.add_argument("to_host", metavar="host", help="destination host")
    m.add_argument("--id", default="", help="migration id (default: generated)")
    m.add_argument("--timeout", type=float, default=120.0,
                   help="give up following after this many seconds (default %(default)s)")
    m.add_argument("--json", action="store_true", help="print statuses as JSON lines")
    m.add_argument("--host", default=socket.gethostname(), help="host name in sources and logs")
    bus_settings.add_arguments(m)
    m.set_defaults(func=_migrate)
