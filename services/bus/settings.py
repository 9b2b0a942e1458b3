"""Bus settings, declared once with their defaults, docs and env variables.

Every service and the CLI take these from the command line (``--bus-pub``)
or the environment (``VNET_BUS_PUB``); the command line wins.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

from services.bus.envelope import DEFAULT_MAX_MESSAGE_BYTES


def _opt(default: Any, env: str, doc: str) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True)
class BusSettings:
    pub: str = _opt(
        "tcp://127.0.0.1:7701",
        "VNET_BUS_PUB",
        "broker endpoint publishers connect to (the broker's XSUB side)",
    )
    sub: str = _opt(
        "tcp://127.0.0.1:7702",
        "VNET_BUS_SUB",
        "broker endpoint subscribers connect to (the broker's XPUB side)",
    )
    keys: str = _opt(
        "",
        "VNET_KEYS",
        "directory made by `vnet keys init`; empty means no CURVE (plain TCP)",
    )
    identity: str = _opt(
        "",
        "VNET_IDENTITY",
        "this client's key name in the keys directory (needed with --keys)",
    )
    max_message_bytes: int = _opt(
        DEFAULT_MAX_MESSAGE_BYTES,
        "VNET_MAX_MESSAGE_BYTES",
        "larger messages are dropped and counted, by the broker and by receivers",
    )
    heartbeat_s: float = _opt(1.0, "VNET_HEARTBEAT_S", "seconds between heartbeats")
    hwm: int = _opt(
        100_000,
        "VNET_BUS_HWM",
        "messages queued per socket before ZeroMQ drops (PUB/SUB: newest dropped)",
    )

    @property
    def curve(self) -> bool:
        return bool(self.keys)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one --bus-* option per setting, defaulting to the environment."""
    group = parser.add_argument_group("bus")
    for f in fields(BusSettings):
        flag = "--bus-" + f.name.replace("_", "-")
        group.add_argument(
            flag,
            dest="bus_" + f.name,
            type=type(f.default),
            default=None,
            help=f"{f.metadata['doc']} (env {f.metadata['env']}, default {f.default!r})",
        )


def from_environment(environ: dict[str, str] | None = None) -> BusSettings:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(BusSettings):
        raw = env.get(f.metadata["env"])
        if raw is not None:
            try:
                kind: Any = type(f.default)
                values[f.name] = kind(raw)
            except ValueError:
                raise ValueError(
                    f"{f.metadata['env']}={raw!r} is not a valid {type(f.default).__name__}"
                ) from None
    return BusSettings(**values)


def from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> BusSettings:
    base = from_environment(environ)
    given = {
        f.name: getattr(args, "bus_" + f.name)
        for f in fields(BusSettings)
        if getattr(args, "bus_" + f.name, None) is not None
    }
    return replace(base, **given)
