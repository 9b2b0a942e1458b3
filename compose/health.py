"""Docker health checks of the compose containers (exit 0 healthy, 1 not).

    health.py heartbeat    this service's heartbeat (heartbeat.$VNET_SERVICE.$VNET_HOST)
                           came through the broker: the service runs and reaches the bus
    health.py forwarder    state.$VNET_HOST came through the broker and says the
                           forwarder is the proxy or its star link to the proxy is up

Bus checks subscribe with the key named $VNET_HEALTH_IDENTITY (default "health")
when $VNET_KEYS is set, and wait at most $VNET_HEALTH_WAIT_S (default 4) seconds.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import zmq


def _subscribe(topic: str) -> zmq.Socket[bytes]:
    endpoint = os.environ.get("VNET_BUS_SUB", "tcp://127.0.0.1:7702").replace("*", "127.0.0.1")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    directory = os.environ.get("VNET_KEYS", "")
    if directory:
        from services.bus import keys

        pair = keys.client_pair(Path(directory), os.environ.get("VNET_HEALTH_IDENTITY", "health"))
        sock.curve_publickey, sock.curve_secretkey = pair.public, pair.secret
        sock.curve_serverkey = keys.broker_public(Path(directory))
    sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sock.connect(endpoint)
    return sock


def _first(topic: str) -> list[bytes] | None:
    """The first message on exactly this topic within the wait, or None."""
    sock = _subscribe(topic)
    deadline = time.monotonic() + float(os.environ.get("VNET_HEALTH_WAIT_S", "4"))
    try:
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(int(left * 1000)):
                continue
            frames = sock.recv_multipart()
            if frames[0] == topic.encode():  # a prefix match may be another host's
                return frames
        return None
    finally:
        sock.close()


def heartbeat() -> bool:
    topic = f"heartbeat.{os.environ['VNET_SERVICE']}.{os.environ['VNET_HOST']}"
    ok = _first(topic) is not None
    if not ok:
        print(f"no {topic} within the wait")
    return ok


def forwarder() -> bool:
    from services.bus import envelope
    from services.bus.pb import vnet_pb2 as pb

    host = os.environ["VNET_HOST"]
    frames = _first(f"state.{host}")
    if frames is None:
        print(f"no state.{host} within the wait")
        return False
    state = envelope.decode(frames).payload
    assert isinstance(state, pb.ForwarderState)
    star = f"star-{host}"
    up = state.is_proxy or any(link.up for link in state.links if link.spec.id == star)
    if not up:
        print(f"{host}: star link to the proxy is down")
    return bool(up)


def main(argv: list[str]) -> int:
    checks = {"heartbeat": heartbeat, "forwarder": forwarder}
    if len(argv) != 1 or argv[0] not in checks:
        print(__doc__)
        return 2
    return 0 if checks[argv[0]]() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
