"""`vnet forwarder`: run one host's forwarder."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable

from services.bus import log as buslog
from services.bus import settings as bus_settings
from services.bus.client import BusClient
from services.forwarder.config import ForwarderSettings, GuestSpec, parse_members


def _settings(args: argparse.Namespace) -> ForwarderSettings:
    return ForwarderSettings(
        host=args.host,
        listen=args.listen,
        is_proxy=args.proxy,
        proxy_address=args.proxy_address or "",
        proxy_transport=args.proxy_transport,
        guests=tuple(GuestSpec.parse(g) for g in args.guest),
        members=parse_members(args.members),
        update_rate_hz=args.update_rate_hz,
        state_interval_s=args.state_interval_s,
        keepalive_s=args.keepalive_s,
        mtu=args.mtu,
        udp_datagram_max=args.udp_datagram_max,
        link_congestion=args.link_congestion,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        counting=not args.no_counting,
        fastpath=not args.no_fastpath,
        lan_iface=args.lan,
        capture_socket=args.capture_socket,
    )


def _forwarder(args: argparse.Namespace) -> int:
    buslog.configure("forwarder", args.host, json_lines=True, level=args.log_level)
    if args.netns:
        from pyroute2 import netns

        netns.setns(args.netns, flags=0)
    try:
        settings = _settings(args)
        settings.check()
    except ValueError as exc:
        buslog.get().error("bad forwarder settings", error=str(exc))
        return 2

    async def main() -> int:
        from services.forwarder.daemon import serve

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        bus = None if args.no_bus else BusClient(bus_settings.from_args(args), "forwarder",
                                                 args.host)
        try:
            return await serve(settings, bus, stop)
        finally:
            if bus is not None:
                bus.close()

    with asyncio.Runner(loop_factory=_loop_factory(args.loop)) as runner:
        return runner.run(main())


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop by default: its loop runs in C, so a wake-up that the compiled fast
    path handles runs no bytecode at all (ping RTT over one hop here: 0.33 ms on
    uvloop, 0.50 ms on asyncio's loop, both with the fast path)."""
    if name == "asyncio":
        return None
    import uvloop

    return uvloop.new_event_loop


def _capture(args: argparse.Namespace) -> int:
    import sys

    from services.forwarder.capture import run_client

    try:
        n = run_client(args.socket, args.port, args.out, args.count, args.duration)
    except (OSError, ValueError) as exc:
        print(f"vnet capture: {exc}", file=sys.stderr)
        return 1
    print(f"{n} frames written to {args.out}")
    return 0


def _operator(args: argparse.Namespace) -> int:
    import sys

    from services.forwarder import operator
    from services.forwarder.overlay import OverlayError

    buslog.configure("vnet", "cli", json_lines=False, level="warning")

    async def main() -> int:
        client = BusClient(bus_settings.from_args(args), "vnet-cli", "cli")
        try:
            if args.command == "apply":
                return await operator.apply(client, args.file, args.timeout, args.dry_run,
                                            sys.stdout)
            return await operator.show(client, args.host, args.command, args.timeout,
                                       sys.stdout)
        finally:
            client.close()

    try:
        return asyncio.run(main())
    except OverlayError as exc:
        print(f"vnet apply: {exc}", file=sys.stderr)
        return 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this area's sub-commands to `vnet`."""
    for what, text in (("links", "overlay links of a host's forwarder"),
                       ("rules", "forwarding rules of a host's forwarder"),
                       ("guests", "guests attached to a host's forwarder")):
        q = sub.add_parser(what, help=f"show the {text} (from state.<host>)")
        q.add_argument("host")
        q.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for state")
        bus_settings.add_arguments(q)
        q.set_defaults(func=_operator)
    q = sub.add_parser("capture", help="write a pcap of what a forwarder sees on a port")
    q.add_argument("port", help="a guest id, a link id or 'lan'")
    q.add_argument("--socket", required=True, help="the forwarder's --capture-socket")
    q.add_argument("--out", required=True, help="pcap file to write")
    q.add_argument("--count", type=int, default=0, help="stop after this many frames")
    q.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds")
    q.set_defaults(func=_capture)
    q = sub.add_parser("apply", help="set a whole overlay from a description file (TOML)")
    q.add_argument("file", help="hosts, guest placement, links, rules: see forwarder/overlay.py")
    q.add_argument("--dry-run", action="store_true", help="show the difference only")
    q.add_argument("--timeout", type=float, default=5.0,
                   help="seconds to wait for states and for the confirmation")
    bus_settings.add_arguments(q)
    q.set_defaults(func=_operator)

    p = sub.add_parser("forwarder", help="run a host's forwarder (VNET data plane)")
    p.add_argument("--host", required=True, help="this host's name (topics, handshakes)")
    p.add_argument("--listen", required=True,
                   help="IP:PORT of the overlay listener: TCP and UDP on PORT, TLS on PORT+1")
    role = p.add_mutually_exclusive_group(required=True)
    role.add_argument("--proxy", action="store_true", help="this forwarder is the proxy")
    role.add_argument("--proxy-address", help="IP:PORT of the proxy's listener")
    p.add_argument("--proxy-transport", default="tcp", choices=["tcp", "tls", "udp"],
                   help="transport of the resilient star link to the proxy")
    p.add_argument("--guest", action="append", default=[],
                   help="id=ID,mac=MAC and one of iface=IF (AF_PACKET), tap=NAME[,netns=NS],"
                        " qemu=unix:/path|tcp:IP:PORT; repeatable")
    p.add_argument("--members", default="",
                   help="hosts allowed to link: comma list or a file with one per line"
                        " (empty: anyone)")
    p.add_argument("--update-rate-hz", type=float, default=1.0,
                   help="rate of frames.<host> counts (20 Hz works)")
    p.add_argument("--state-interval-s", type=float, default=1.0,
                   help="seconds between links.<host> and state.<host>")
    p.add_argument("--keepalive-s", type=float, default=0.5,
                   help="link keepalive interval; a link is dead after 3 silent intervals")
    p.add_argument("--mtu", type=int, default=1500,
                   help="guest MTU: non-GSO frames longer than MTU+18 bytes are dropped")
    p.add_argument("--udp-datagram-max", type=int, default=1472,
                   help="UDP links: largest datagram payload the underlay carries unfragmented;"
                        " larger frames go in pieces (1472 on a 1500-byte path)")
    p.add_argument("--link-congestion", default="cubic", metavar="NAME",
                   help="TCP links' congestion control (\"\": the kernel's default); one"
                        " the kernel lacks is logged and counted, and the default kept")
    p.add_argument("--tls-cert", default="", help="PEM cert (with key unless --tls-key)")
    p.add_argument("--tls-key", default="", help="PEM key for --tls-cert")
    p.add_argument("--tls-ca", default="", help="CA peers' certs must chain to (default: cert)")
    p.add_argument("--lan", default="", metavar="IFACE",
                   help="proxy only: bridge the overlay onto this interface (the user's LAN)")
    p.add_argument("--capture-socket", default="",
                   help="UNIX socket path where `vnet capture` can ask for a port's frames")
    p.add_argument("--netns", default="", help="enter this network namespace first")
    p.add_argument("--no-bus", action="store_true", help="forward only; publish nothing")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                   help="the event loop: uvloop (default, in C) or asyncio's own")
    p.add_argument("--no-fastpath", action="store_true",
                   help="carry every frame in Python, not the compiled fast path"
                        " (comparisons; VNET_FASTPATH=0 does the same)")
    p.add_argument("--no-counting", action="store_true",
                   help="skip per-pair counting (benchmarks of its cost only)")
    bus_settings.add_arguments(p)
    p.set_defaults(func=_forwarder)
