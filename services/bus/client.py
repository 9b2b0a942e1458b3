"""The bus client every service uses: publish, subscribe by prefix, receive.

Publishing never blocks (PUB drops at its high-water mark). Receiving drains
whatever is queued in one go, so a busy subscriber pays one wake-up per
batch, not per message. Every received message has been checked by
:mod:`envelope` and :mod:`sequence`; anything bad is logged, counted and
dropped here, so a service only ever sees good messages.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import deque
from pathlib import Path
from typing import Any

import zmq
from google.protobuf.message import Message

from services.bus import envelope, keys, topics
from services.bus import log as buslog
from services.bus.counters import Counters
from services.bus.envelope import BadMessage, BusMessage
from services.bus.pb import vnet_pb2 as pb
from services.bus.sequence import SequenceTracker, SeqVerdict
from services.bus.settings import BusSettings

VERSION = "0.1.0"
_PENDING_LIMIT = 100_000  # messages held back during a ready() handshake
# Plain ints: combining zmq's enum flags costs more per call than the send.
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class BusTimeout(TimeoutError):
    """The broker did not answer within the time asked for."""


def _curve_keys(settings: BusSettings) -> tuple[bytes, bytes, bytes]:
    """This client's public and secret key and the broker's public key."""
    if not settings.identity:
        raise ValueError("a keys directory needs an identity (--bus-identity NAME)")
    pair = keys.client_pair(Path(settings.keys), settings.identity)
    return pair.public, pair.secret, keys.broker_public(Path(settings.keys))


class BusClient:
    """One service's connection to the broker (a PUB and a SUB socket)."""

    def __init__(
        self,
        settings: BusSettings,
        service: str,
        host: str,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.host = host
        self.source = f"{service}@{host}"
        self.instance = int.from_bytes(os.urandom(8), "big") or 1
        self.counters = Counters()
        self._encoder = envelope.Encoder(self.source, self.instance)
        self.started = time.monotonic()
        # Sequence numbers count per topic, so a subscriber to some of a
        # source's topics sees no false gaps from the topics it skips.
        self._seqs: dict[str, int] = {}
        self._tracker = SequenceTracker()
        self._pending: deque[BusMessage] = deque()
        self._log = buslog.get(component="bus")
        curve = _curve_keys(settings) if settings.curve else None
        self._own_ctx = context is None
        # Plain sockets: sends never block and receives drain without waiting;
        # waiting is done by one asyncio reader on the SUB socket's FD.
        self._ctx: zmq.Context[zmq.Socket[bytes]] = context or zmq.Context()
        self._pub: zmq.Socket[bytes] = self._ctx.socket(zmq.PUB)
        self._sub: zmq.Socket[bytes] = self._ctx.socket(zmq.SUB)
        self._sub_fd: int = self._sub.getsockopt(zmq.FD)  # type: ignore[assignment]
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        for sock in (self._pub, self._sub):
            sock.setsockopt(zmq.LINGER, 0)
        self._pub.setsockopt(zmq.SNDHWM, settings.hwm)
        self._sub.setsockopt(zmq.RCVHWM, settings.hwm)
        if curve is not None:
            for sock in (self._pub, self._sub):
                sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = curve
        self._pub.connect(settings.pub)
        self._sub.connect(settings.sub)

    # ------------------------------------------------------------ publishing

    def publish(self, topic: str, payload: Message, now: float | None = None) -> None:
        """Send one message; never blocks (dropped by ZeroMQ at the HWM)."""
        self.publish_wire(topic, envelope.payload_field(payload), payload.SerializeToString(),
                          now)

    def publish_wire(self, topic: str, field: str, payload: bytes,
                     now: float | None = None) -> None:
        """As publish, for a payload already in wire form; field is its Envelope field."""
        seq = self._seqs[topic] = self._seqs.get(topic, 0) + 1
        topic_frame, body = self._encoder.encode_wire(
            topic, field, seq, time.time() if now is None else now, payload
        )
        try:
            # Two sends with int flags: a third of send_multipart's cost.
            self._pub.send(topic_frame, _NOBLOCK_MORE)
            self._pub.send(body, _NOBLOCK)
        except zmq.Again:
            self.counters.inc("send_dropped")
        else:
            self.counters.inc("sent")

    def heartbeat(self, extra: dict[str, int] | None = None) -> None:
        counters = self.counters.snapshot()
        if extra:
            counters.update(extra)
        self.publish(
            topics.join(topics.HEARTBEAT, self.service, self.host),
            pb.Heartbeat(
                service=self.service,
                host=self.host,
                uptime_s=time.monotonic() - self.started,
                interval_s=self.settings.heartbeat_s,
                version=VERSION,
                counters=counters,
            ),
        )

    async def heartbeats(self, extra: Any = None) -> None:
        """Publish heartbeats forever; run it as a task of the service loop."""
        while True:
            self.heartbeat(extra() if extra else None)
            await asyncio.sleep(self.settings.heartbeat_s)

    # ------------------------------------------------------------ receiving

    def subscribe(self, prefix: str) -> None:
        self._sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())

    def unsubscribe(self, prefix: str) -> None:
        self._sub.setsockopt(zmq.UNSUBSCRIBE, prefix.encode())

    def _check(self, frames: list[bytes]) -> BusMessage | None:
        try:
            msg = envelope.decode(frames, self.settings.max_message_bytes)
        except BadMessage as exc:
            self.counters.inc("dropped_" + exc.reason)
            self._log.error("bus message dropped", reason=exc.reason, detail=exc.detail)
            return None
        verdict, missed = self._tracker.observe(
            (msg.source, msg.topic), msg.instance, msg.seq
        )
        if verdict is SeqVerdict.STALE:
            self.counters.inc("dropped_stale")
            self._log.error(
                "stale bus message dropped", source=msg.source, seq=msg.seq, topic=msg.topic
            )
            return None
        if verdict is SeqVerdict.GAP:
            self.counters.inc("gaps", missed)
            self._log.warning("sequence gap", source=msg.source, missed=missed, seq=msg.seq)
        elif verdict is SeqVerdict.RESTART:
            self.counters.inc("source_restarts")
        return msg

    def drain(self, limit: int = 1000) -> list[BusMessage]:
        """Every good message already queued (up to limit), without waiting."""
        out: list[BusMessage] = []
        while self._pending and len(out) < limit:
            out.append(self._pending.popleft())
        self._drain_socket(out, limit)
        return out

    def _drain_socket(self, out: list[BusMessage], limit: int) -> None:
        # Frames carry their own "more" flag, which is cheaper than the
        # RCVMORE lookup recv_multipart makes per frame. A message's frames
        # arrive together, so the ones after the first are always there.
        recv = self._sub.recv
        before = len(out)
        while len(out) < limit:
            try:
                frames = [recv(_NOBLOCK, copy=False)]
            except zmq.Again:
                break
            while frames[-1].more:
                frames.append(recv(_NOBLOCK, copy=False))
            msg = self._check([frame.bytes for frame in frames])
            if msg is not None:
                out.append(msg)
        if len(out) > before:
            self.counters.inc("received", len(out) - before)

    async def recv_batch(self, timeout: float | None = None, limit: int = 1000) -> list[BusMessage]:
        """Wait up to timeout seconds for messages; [] when none came."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = self.drain(limit)
            if batch:
                return batch
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return []
            await self._wait_readable(left)

    def _sub_events(self) -> int:
        return int(self._sub.getsockopt(zmq.EVENTS))

    def _on_readable(self) -> None:
        # Reading EVENTS consumes the FD's signal, so the loop does not spin
        # on a readable FD while nobody waits.
        if self._sub_events() & zmq.POLLIN and self._waiter is not None:
            _wake(self._waiter)

    async def _wait_readable(self, timeout: float | None) -> None:
        """Sleep until the SUB socket has a message queued, or timeout.

        ZeroMQ's FD is edge-triggered (it signals a change, then EVENTS tells
        what), so EVENTS is checked before sleeping. One reader stays
        registered with the loop: cheaper than zmq.asyncio's poll per wait.
        """
        if self._sub_events() & zmq.POLLIN:
            return
        loop = asyncio.get_running_loop()
        if self._reader_loop is not loop:
            loop.add_reader(self._sub_fd, self._on_readable)
            self._reader_loop = loop
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        timer = None if timeout is None else loop.call_later(timeout, _wake, waiter)
        try:
            # A message may have arrived between the check and registering.
            if self._sub_events() & zmq.POLLIN:
                return
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def recv(self, timeout: float | None = None) -> BusMessage | None:
        batch = await self.recv_batch(timeout, limit=1)
        return batch[0] if batch else None

    async def ready(self, timeout: float = 10.0) -> None:
        """Return once a probe made the round trip through the broker.

        Proves that both sockets are connected and that subscriptions made
        before the call have reached the broker; holds back other messages
        that arrive meanwhile for the next receive.
        """
        nonce = secrets.token_hex(8)
        probe_topic = topics.join(topics.PROBE, self.service, self.host, nonce)
        self.subscribe(probe_topic)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.publish(probe_topic, pb.Probe(nonce=nonce))
                end = min(deadline, time.monotonic() + 0.05)
                while (left := end - time.monotonic()) > 0:
                    await self._wait_readable(left)
                    batch: list[BusMessage] = []
                    self._drain_socket(batch, 1000)
                    for msg in batch:
                        if msg.topic == probe_topic:
                            return
                        if len(self._pending) < _PENDING_LIMIT:
                            self._pending.append(msg)
                        else:
                            self.counters.inc("dropped_pending_full")
            raise BusTimeout(
                f"no answer from the broker at {self.settings.pub} / {self.settings.sub}"
                f" within {timeout:.1f}s: is `vnet broker` running (with the same keys)?"
            )
        finally:
            self.unsubscribe(probe_topic)

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        loop = self._reader_loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._sub_fd)
        self._reader_loop = None
        self._pub.close(linger=0)
        self._sub.close(linger=0)
        if self._own_ctx:
            self._ctx.term()

    def __enter__(self) -> BusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
