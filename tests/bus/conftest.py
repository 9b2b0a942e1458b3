"""Fixtures: a real broker process on random loopback ports, tracked clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import zmq

from services.bus.client import BusClient
from services.bus.launch import Launcher
from services.bus.settings import BusSettings


@pytest.fixture
def launcher() -> Iterator[Launcher]:
    with Launcher() as launch:
        yield launch


@pytest.fixture
def bus(launcher: Launcher) -> BusSettings:
    proc = launcher.start_broker(["--bus-heartbeat-s", "0.2"])
    return BusSettings(pub=str(proc.info["pub"]), sub=str(proc.info["sub"]))


@pytest.fixture
def make_client() -> Iterator[Callable[..., BusClient]]:
    made: list[BusClient] = []

    def make(settings: BusSettings, service: str = "test", host: str = "t") -> BusClient:
        client = BusClient(settings, service, host)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def raw_pub() -> Iterator[Callable[[str], zmq.Socket[bytes]]]:
    """A bare PUB socket for sending what no BusClient would."""
    ctx = zmq.Context()
    socks: list[zmq.Socket[bytes]] = []

    def make(endpoint: str) -> zmq.Socket[bytes]:
        sock = ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        socks.append(sock)
        return sock

    yield make
    for sock in socks:
        sock.close(linger=0)
    ctx.term()
