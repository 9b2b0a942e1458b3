"""`vnet` sub-commands of the inference: inference, topology, matrix."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path

from services.bus import log as buslog
from services.bus import settings, topics
from services.bus.client import BusClient, BusTimeout
from services.bus.pb import vnet_pb2 as pb
from services.inference import params as inference_params
from services.inference import render
from services.inference.core import topology_from_matrix
from services.inference.service import serve


def _host_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default=socket.gethostname(), help="host name in sources and logs"
    )


def _inference(args: argparse.Namespace) -> int:
    buslog.configure("inference", args.host, json_lines=True, level=args.log_level)
    try:
        knobs = inference_params.from_args(args)
    except ValueError as exc:
        print(f"vnet inference: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(settings.from_args(args), knobs, args.host))
    return 0


async def _next(
    args: argparse.Namespace, roots: list[str]
) -> pb.TopologyChange | pb.TrafficMatrix:
    """The next message on any of roots, or BusTimeout."""
    with BusClient(settings.from_args(args), args.command, args.host) as client:
        for root in roots:
            client.subscribe(root)
        await client.ready()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.timeout
        while (left := deadline - loop.time()) > 0:
            msg = await client.recv(left)
            if msg is None:
                break
            if isinstance(msg.payload, pb.TopologyChange | pb.TrafficMatrix) and any(
                topics.exact(msg.topic, root) for root in roots
            ):
                return msg.payload
    raise BusTimeout(f"nothing on {', '.join(roots)} within {args.timeout:g}s:"
                     " is `vnet inference` running and are forwarders counting?")


def _topology(args: argparse.Namespace) -> int:
    buslog.configure("topology", args.host, json_lines=False, level=args.log_level)
    try:
        got = asyncio.run(_next(args, [topics.TOPOLOGY_CHANGE, topics.TRAFFIC_MATRIX]))
    except BusTimeout as exc:
        print(f"vnet topology: {exc}", file=sys.stderr)
        return 1
    change = got if isinstance(got, pb.TopologyChange) else topology_from_matrix(got)
    print(render.describe(change))
    if args.dot:
        Path(args.dot).write_text(render.to_dot(change))
        print(f"DOT written to {args.dot}")
    if args.png:
        render.draw_topology(change, Path(args.png))
        print(f"PNG written to {args.png}")
    return 0


def _matrix(args: argparse.Namespace) -> int:
    buslog.configure("matrix", args.host, json_lines=False, level=args.log_level)
    try:
        got = asyncio.run(_next(args, [topics.TRAFFIC_MATRIX]))
    except BusTimeout as exc:
        print(f"vnet matrix: {exc}", file=sys.stderr)
        return 1
    assert isinstance(got, pb.TrafficMatrix)
    render.draw_matrix(got, Path(args.png))
    print(f"{len(got.nodes)} active guests; heatmap written to {args.png}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this area's sub-commands to `vnet`."""
    p = sub.add_parser(
        "inference", help="infer the application's topology and traffic matrix (VTTIF)"
    )
    _host_arg(p)
    inference_params.add_arguments(p)
    settings.add_arguments(p)
    p.set_defaults(func=_inference)

    p = sub.add_parser(
        "topology", help="print the current topology from the bus; export DOT and PNG"
    )
    p.add_argument("--dot", default="topology.dot", help="DOT file to write ('' for none)")
    p.add_argument("--png", default="topology.png", help="PNG file to write ('' for none)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for the next topology.change or traffic.matrix")
    _host_arg(p)
    settings.add_arguments(p)
    p.set_defaults(func=_topology)

    p = sub.add_parser("matrix", help="write the current traffic matrix as a heatmap PNG")
    p.add_argument("--png", default="matrix.png", help="PNG file to write")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for the next traffic.matrix")
    _host_arg(p)
    settings.add_arguments(p)
    p.set_defaults(func=_matrix)
