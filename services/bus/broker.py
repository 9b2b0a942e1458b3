"""The bus broker: an XSUB/XPUB forwarder with checks, in one poll loop.

Publishers connect to the XSUB side, subscribers to the XPUB side. The
broker subscribes upstream to everything (so a publisher's first message is
never lost to subscription propagation) and forwards each message that
passes: two frames, within the size limit and, with CURVE, a control topic
only from a key on the control allow-list. ZeroMQ tags each message with
the User-Id our ZAP handler gave the sending connection, which is how the
broker knows who published what. Heartbeats go straight out of the XPUB.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import zmq
from zmq.utils import z85

from services.bus import envelope, keys, topics
from services.bus import log as buslog
from services.bus.counters import Counters
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"vnet"
_BATCH = 2000  # messages forwarded per wake-up before timers are checked
_HARD_LIMIT_FACTOR = 16  # beyond this ZeroMQ itself drops the connection
# Plain ints: combining zmq's enum flags costs more per call than the send.
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)


class _StopProxy(Exception):
    """Raised from the timer handler to leave libzmq's proxy."""


class Broker:
    def __init__(self, settings: BusSettings, host: str) -> None:
        self.settings = settings
        self.host = host
        self.source = f"broker@{host}"
        self.counters = Counters()
        self._log = buslog.get(component="broker")
        self._instance = int.from_bytes(os.urandom(8), "big") or 1
        self._seq = 0
        self._started = time.monotonic()
        self._ctx = zmq.Context()
        self._allow: keys.AllowList | None = None
        self._zap: zmq.Socket[bytes] | None = None
        self.frontend: zmq.Socket[bytes] = self._ctx.socket(zmq.XSUB)
        self.backend: zmq.Socket[bytes] = self._ctx.socket(zmq.XPUB)
        for sock in (self.frontend, self.backend):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, settings.hwm)
            sock.setsockopt(zmq.RCVHWM, settings.hwm)
        self.frontend.setsockopt(
            zmq.MAXMSGSIZE, settings.max_message_bytes * _HARD_LIMIT_FACTOR
        )
        if settings.curve:
            self._configure_curve(Path(settings.keys))
        self.frontend.bind(settings.pub)
        self.backend.bind(settings.sub)
        self.pub_endpoint = self.frontend.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sub_endpoint = self.backend.getsockopt_string(zmq.LAST_ENDPOINT)
        self.frontend.send(b"\x01")  # subscribe upstream to every topic

    def _configure_curve(self, directory: Path) -> None:
        pair = keys.broker_pair(directory)
        self._allow = keys.AllowList.load(directory)
        self._zap = self._ctx.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        self._zap.bind(ZAP_ENDPOINT)
        for sock in (self.frontend, self.backend):
            sock.curve_server = True
            sock.curve_publickey = pair.public
            sock.curve_secretkey = pair.secret
            sock.zap_domain = ZAP_DOMAIN
        self._log.info(
            "curve on", allowed=len(self._allow.allowed), control=sorted(self._allow.control)
        )

    # ------------------------------------------------------------ ZAP

    def _handle_zap(self) -> None:
        """Answer one ZAP request: known public keys pass, named by key file."""
        assert self._zap is not None and self._allow is not None
        request = self._zap.recv_multipart()
        version, request_id, domain, address = request[:4]
        mechanism = request[5] if len(request) > 5 else b""
        name = ""
        if mechanism == b"CURVE" and len(request) > 6 and len(request[6]) == 32:
            name = self._allow.allowed.get(z85.encode(request[6]), "")
        if name:
            self.counters.inc("auth_allowed")
            self._log.info("client admitted", client=name, address=address.decode(errors="replace"))
            reply = [version, request_id, b"200", b"OK", name.encode(), b""]
        else:
            self.counters.inc("auth_denied")
            self._log.error(
                "client refused: public key not in the allow-list",
                mechanism=mechanism.decode(errors="replace"),
                address=address.decode(errors="replace"),
                domain=domain.decode(errors="replace"),
            )
            reply = [version, request_id, b"400", b"key not allowed", b"", b""]
        self._zap.send_multipart(reply)

    # ------------------------------------------------------------ forwarding

    def _admit(self, frames: list[zmq.Frame]) -> bool:
        if len(frames) != 2:
            self.counters.inc("dropped_bad_frames")
            self._log.error("message dropped: expected [topic, envelope]", frames=len(frames))
            return False
        topic, body = frames
        size = len(topic.bytes) + len(body.bytes)
        if size > self.settings.max_message_bytes:
            self.counters.inc("dropped_oversized")
            self._log.error(
                "message dropped: oversized",
                size=size,
                limit=self.settings.max_message_bytes,
                topic=topic.bytes[:64].decode(errors="replace"),
            )
            return False
        if self._allow is not None:
            name = topic.bytes.decode(errors="replace")
            if topics.is_control(name):
                user = body.get("User-Id")
                if user not in self._allow.control:
                    self.counters.inc("dropped_unauthorized")
                    self._log.error(
                        "control message dropped: publisher not on the control allow-list",
                        topic=name,
                        client=user,
                    )
                    return False
        return True

    def _forward_batch(self) -> None:
        """Forward up to _BATCH queued messages, zero-copy.

        Frames are received as zmq.Frame (whose ``more`` flag replaces a
        RCVMORE lookup per frame) and sent on as they are. The common case,
        [topic, envelope] within the size limit and no CURVE, is decided
        inline; anything else goes through :meth:`_admit`, which logs and
        counts the drop. ZeroMQ delivers a message's frames together, so the
        frames after the first are always there to read.
        """
        recv = self.frontend.recv
        send = self.backend.send
        fast = self._allow is None
        limit = self.settings.max_message_bytes
        forwarded = 0
        try:
            for _ in range(_BATCH):
                try:
                    topic = recv(_NOBLOCK, copy=False)
                except zmq.Again:
                    return
                frames = [topic]
                if topic.more:
                    body = recv(_NOBLOCK, copy=False)
                    if fast and not body.more and len(topic) + len(body) <= limit:
                        send(topic, _NOBLOCK_MORE, copy=False)
                        send(body, _NOBLOCK, copy=False)
                        forwarded += 1
                        continue
                    frames.append(body)
                while frames[-1].more:
                    frames.append(recv(_NOBLOCK, copy=False))
                if self._admit(frames):
                    self.backend.send_multipart(frames, _NOBLOCK, copy=False)
                    forwarded += 1
        finally:
            if forwarded:
                self.counters.inc("forwarded", forwarded)

    def _drain_subscriptions(self) -> None:
        while True:
            try:
                event = self.backend.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event[:1] == b"\x01":
                self.counters.inc("subscriptions")

    # ------------------------------------------------------------ heartbeat

    def heartbeat(self) -> None:
        self._seq += 1
        frames = envelope.encode(
            topics.join(topics.HEARTBEAT, "broker", self.host),
            self.source,
            self._instance,
            self._seq,
            time.time(),
            pb.Heartbeat(
                service="broker",
                host=self.host,
                uptime_s=time.monotonic() - self._started,
                interval_s=self.settings.heartbeat_s,
                version="0.1.0",
                counters=self.counters.snapshot(),
            ),
        )
        try:
            self.backend.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self.counters.inc("send_dropped")

    # ------------------------------------------------------------ loop

    def run(self, stopping: Callable[[], bool], check: bool = False) -> None:
        """Forward until stopping() says so.

        With CURVE, or when asked to check, every message passes through
        Python (:meth:`run_checked`); otherwise libzmq's C proxy forwards
        (:meth:`run_fast`), and receivers do the checks they always do.
        """
        if check or self._allow is not None:
            self.run_checked(stopping)
        else:
            self.run_fast(stopping)

    def run_fast(self, stopping: Callable[[], bool]) -> None:
        """libzmq's proxy forwards; heartbeats come from a SIGALRM timer.

        The proxy's poll returns on the signal, pyzmq runs the handler in this
        (the only) thread between two messages and resumes the proxy, so no
        second thread touches the sockets. The handler raises to stop.
        """
        tick_s = min(self.settings.heartbeat_s, 0.2)
        next_beat = time.monotonic()

        def on_alarm(signum: int, frame: object) -> None:
            nonlocal next_beat
            if stopping():
                raise _StopProxy
            now = time.monotonic()
            if now >= next_beat:
                self.heartbeat()
                next_beat = now + self.settings.heartbeat_s

        self.heartbeat()
        next_beat = time.monotonic() + self.settings.heartbeat_s
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, tick_s, tick_s)
        try:
            zmq.proxy(self.frontend, self.backend)
        except _StopProxy:
            pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def run_checked(self, stopping: Callable[[], bool]) -> None:
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)
        if self._zap is not None:
            poller.register(self._zap, zmq.POLLIN)
        next_beat = time.monotonic()
        while not stopping():
            now = time.monotonic()
            if now >= next_beat:
                self.heartbeat()
                next_beat = now + self.settings.heartbeat_s
            timeout_ms = max(1, min(200, int((next_beat - now) * 1000)))
            for sock, _ in poller.poll(timeout_ms):
                if sock is self.frontend:
                    self._forward_batch()
                elif sock is self.backend:
                    self._drain_subscriptions()
                elif sock is self._zap:
                    self._handle_zap()

    def close(self) -> None:
        for sock in (self.frontend, self.backend, self._zap):
            if sock is not None:
                sock.close(linger=0)
        self._ctx.term()
