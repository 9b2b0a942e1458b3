"""One Patterns worker's I/O shell: sockets, the compute phase, reports, a clean end.

One selector loop, no threads. Set-up connects every topology edge (the higher
rank connects, retrying until the lower one listens); then each iteration
computes, hands the core's sends to non-blocking sockets and polls until the
core's steps are all taken and the sends are in the kernel. Reports go out
between polls at the report interval.

Ending is agreed without a coordinator: a worker stops at an iteration
boundary (its iterations or duration are over, or SIGTERM), shuts down its
sending side and reads until every neighbour has done the same. A neighbour
that finds the connection ended cleanly while it waits for a message
finishes too, so the end spreads along the edges and every worker ends
within an iteration of the others, with no connection reset.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import FrameType
from typing import Any

from services.bus import log as buslog
from services.bus.pb import vnet_pb2 as pb
from services.workloads import compute, topologies, wire
from services.workloads.patterns import PatternsParams, Progress, ProtocolError, schedule
from services.workloads.report import APP, Meter, Totals

_RECV_BYTES = 256 * 1024
_MAX_IOV = 64
_RETRY_S = 0.1
# connect() errors that mean "not listening yet" or "not reachable yet": retry.
_RETRY_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT,
                 errno.ECONNRESET, errno.EADDRNOTAVAIL}

Publish = Callable[[pb.AppReport], None]


class SetupError(RuntimeError):
    """The neighbour connections did not all come up."""


@dataclass
class Summary:
    """The run as a whole: printed as one JSON line at the end."""

    rank: int
    guest: str
    topology: str
    workers: int
    iterations: int
    elapsed_s: float
    iterations_per_s: float
    bytes_sent: int
    bytes_received: int
    ended: str    # iterations | duration | peer finished | stopped | error
    error: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Peer:
    """One neighbour's connection."""

    def __init__(self, rank: int, sock: socket.socket) -> None:
        self.rank = rank
        self.sock = sock
        self.parser = wire.StreamParser()
        self.tx: deque[memoryview] = deque()
        self.eof = False   # it shut down its sending side at a message boundary
        self.shut = False  # we shut down ours


class Worker:
    def __init__(self, params: PatternsParams, publish: Publish | None = None) -> None:
        params.check()
        self.params = params
        self.publish = publish
        self.log = buslog.get(component="patterns", rank=params.rank)
        self.neighbours = topologies.neighbours(params.topology, params.workers, params.rank)
        self.progress = Progress(schedule(params.topology, params.workers, params.rank,
                                          params.msg_bytes))
        self.work_ops = params.work_ops()
        self.totals = Totals()
        self.peers: dict[int, _Peer] = {}
        self._dialling: dict[int, socket.socket] = {}
        self.sel = selectors.DefaultSelector()
        self._payload = memoryview(bytes(params.msg_bytes))
        self._rx = bytearray(_RECV_BYTES)
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._draining = False

    # ------------------------------------------------------------ control

    def request_stop(self) -> None:
        """Finish at the next iteration boundary (safe from a signal handler)."""
        self._stop = True
        # OSError: a wake-up is pending already (buffer full), or the run ended.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT end the run cleanly (the main thread only)."""
        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)

    # ------------------------------------------------------------ the run

    def run(self) -> Summary:
        p = self.params
        error, ended = "", "stopped"
        started = time.monotonic()
        meter = Meter(pb.AppReport(app=APP, guest=p.guest, rank=p.rank, topology=p.topology,
                                   workers=p.workers), p.report_interval_s, started)
        try:
            self._connect_all()
            started = time.monotonic()
            meter = Meter(meter.template, p.report_interval_s, started)
            self.log.info("connected", neighbours=list(self.neighbours),
                          work_ops=self.work_ops, compute_s=p.compute_s)
            ended = self._iterate(meter, started)
        except (OSError, SetupError, ProtocolError, wire.WireError) as exc:
            error, ended = str(exc), "error"
            self.log.error("patterns run failed", error=error)
        finally:
            stopped = time.monotonic()  # the run's figures leave the wait for neighbours out
            try:
                self._drain()
            finally:
                self.close()
        elapsed = stopped - started
        if self.publish is not None:
            self.publish(meter.report(stopped, self.totals, done=True, error=error))
        return Summary(
            rank=p.rank, guest=p.guest, topology=p.topology, workers=p.workers,
            iterations=self.totals.iterations, elapsed_s=round(elapsed, 6),
            iterations_per_s=self.totals.iterations / elapsed if elapsed > 0 else 0.0,
            bytes_sent=self.totals.bytes_sent, bytes_received=self.totals.bytes_received,
            ended=ended, error=error)

    def _iterate(self, meter: Meter, started: float) -> str:
        p = self.params
        while True:
            if self._stop:
                return "stopped"
            if p.compute_s:
                compute.busy_for(p.compute_s)
            elif self.work_ops:
                compute.busy_ops(self.work_ops)
            self._queue(self.progress.advance())
            while not (self.progress.complete and self._flushed()):
                if self._stop:
                    return "stopped"
                if any(self.peers[r].eof for r in self.progress.missing()):
                    return "peer finished"
                self._poll(meter.next_due(time.monotonic()))
                self._queue(self.progress.advance())
                self._report(meter)
            self.progress.next_iteration()
            self.totals.iterations += 1
            self._report(meter)
            if p.iterations and self.totals.iterations >= p.iterations:
                return "iterations"
            if p.duration_s and time.monotonic() - started >= p.duration_s:
                return "duration"
            if any(peer.eof for peer in self.peers.values()):
                return "peer finished"

    def _report(self, meter: Meter) -> None:
        if self.publish is None:
            return
        got = meter.poll(time.monotonic(), self.totals)
        if got is not None:
            self.publish(got)

    # ------------------------------------------------------------ set-up

    def _connect_all(self) -> None:
        """Connect to lower-ranked neighbours, accept the higher ones, until all are up."""
        p = self.params
        deadline = time.monotonic() + p.connect_timeout_s
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Lower neighbours still to dial, and when; a rank is out of it while dialling.
        retry_at: dict[int, float] = {r: 0.0 for r in self.neighbours if r < p.rank}
        hellos: dict[socket.socket, bytearray] = {}
        try:
            listener.bind(p.endpoints[p.rank])
            listener.listen(max(8, len(self.neighbours)))
            listener.setblocking(False)
            self.sel.register(listener, selectors.EVENT_READ, "listen")
            while len(self.peers) < len(self.neighbours):
                now = time.monotonic()
                if self._stop:
                    raise SetupError("stopped before every neighbour was connected")
                if now >= deadline:
                    raise SetupError(self._missing_message())
                for r, at in list(retry_at.items()):
                    if at <= now:
                        del retry_at[r]
                        self._dial(r)
                wait = min([deadline - now, *(at - now for at in retry_at.values())])
                for key, _ in self.sel.select(max(0.0, wait)):
                    self._setup_event(key, listener, retry_at, hellos)
            for peer in self.peers.values():
                self._interest(peer)
        finally:
            for s in hellos:
                self.sel.unregister(s)
                s.close()
            for r in list(self._dialling):
                self._drop_dial(r)
            if listener in (k.fileobj for k in self.sel.get_map().values()):
                self.sel.unregister(listener)
            listener.close()

    def _dial(self, rank: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        code = s.connect_ex(self.params.endpoints[rank])
        if code not in (0, errno.EINPROGRESS):
            s.close()
            raise OSError(code, f"connect to rank {rank} at {self._addr(rank)}: "
                                f"{os.strerror(code)}")
        self._dialling[rank] = s
        self.sel.register(s, selectors.EVENT_WRITE, ("dial", rank))

    def _drop_dial(self, rank: int) -> None:
        s = self._dialling.pop(rank)
        self.sel.unregister(s)
        s.close()

    def _setup_event(self, key: selectors.SelectorKey, listener: socket.socket,
                     retry_at: dict[int, float], hellos: dict[socket.socket, bytearray]) -> None:
        data = key.data
        if data is None:
            self._drain_wakeup()
        elif data == "listen":
            try:
                s, _ = listener.accept()
            except BlockingIOError:
                return
            s.setblocking(False)
            hellos[s] = bytearray()
            self.sel.register(s, selectors.EVENT_READ, "hello")
        elif data == "hello":
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            self._read_hello(conn, hellos)
        else:
            _, rank = data
            s = self._dialling[rank]
            code = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == 0:
                self.sel.unregister(s)
                del self._dialling[rank]
                s.sendall(wire.hello(self.params.rank))  # 8 bytes into an empty buffer
                self._add_peer(rank, s)
            elif code in _RETRY_ERRNOS:
                self._drop_dial(rank)
                retry_at[rank] = time.monotonic() + _RETRY_S
            else:
                raise OSError(code, f"connect to rank {rank} at {self._addr(rank)}: "
                                    f"{os.strerror(code)}")

    def _read_hello(self, s: socket.socket, hellos: dict[socket.socket, bytearray]) -> None:
        buf = hellos[s]
        try:
            got = s.recv(wire.HELLO.size - len(buf))
        except OSError as exc:
            got, reason = b"", str(exc)
        else:
            reason = "closed before its hello"
        if got:
            buf += got
            if len(buf) < wire.HELLO.size:
                return
            try:
                rank = wire.parse_hello(bytes(buf))
            except wire.WireError as exc:
                rank, reason = -1, str(exc)
            else:
                reason = f"rank {rank} is not a neighbour still expected"
            if rank in self.neighbours and rank > self.params.rank and rank not in self.peers:
                del hellos[s]
                self.sel.unregister(s)
                self._add_peer(rank, s)
                return
        # A stranger or a broken connection: drop it, keep waiting for the real one.
        self.log.warning("connection dropped during set-up", reason=reason)
        del hellos[s]
        self.sel.unregister(s)
        s.close()

    def _add_peer(self, rank: int, s: socket.socket) -> None:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Registered once set-up is over: what it sends early waits in the kernel.
        self.peers[rank] = _Peer(rank, s)

    def _addr(self, rank: int) -> str:
        host, port = self.params.endpoints[rank]
        return f"{host}:{port}"

    def _missing_message(self) -> str:
        missing = [r for r in self.neighbours if r not in self.peers]
        where = ", ".join(f"rank {r} at {self._addr(r)}" for r in missing)
        return (f"no connection to {where} within {self.params.connect_timeout_s:g}s:"
                " is that worker running, and is its address reachable?")

    # ------------------------------------------------------------ messages

    def _queue(self, sends: list[tuple[int, int]]) -> None:
        for rank, size in sends:
            peer = self.peers[rank]
            if peer.shut:
                continue
            peer.tx.append(memoryview(wire.header(self.progress.iteration, size)))
            if size:
                peer.tx.append(self._payload[:size])
            self._flush(peer)

    def _flushed(self) -> bool:
        return all(not peer.tx for peer in self.peers.values())

    def _flush(self, peer: _Peer) -> None:
        while peer.tx:
            bufs = [peer.tx[i] for i in range(min(len(peer.tx), _MAX_IOV))]
            try:
                sent = peer.sock.sendmsg(bufs)
            except BlockingIOError:
                break
            except OSError as exc:
                if self._draining:  # it is gone; nothing more to say to it
                    peer.tx.clear()
                    peer.eof = peer.shut = True
                    break
                raise OSError(exc.errno, f"send to rank {peer.rank}: {exc.strerror}") from exc
            self.totals.bytes_sent += sent
            while sent and peer.tx:
                head = peer.tx[0]
                if sent >= len(head):
                    sent -= len(head)
                    peer.tx.popleft()
                else:
                    peer.tx[0] = head[sent:]
                    sent = 0
            if peer.tx:
                break  # the kernel took part: its buffer is full
        self._interest(peer)

    def _interest(self, peer: _Peer) -> None:
        events = (0 if peer.eof else selectors.EVENT_READ) | \
            (selectors.EVENT_WRITE if peer.tx else 0)
        registered = self.sel.get_map().get(peer.sock.fileno())
        if registered is None:
            if events:
                self.sel.register(peer.sock, events, peer.rank)
        elif not events:
            self.sel.unregister(peer.sock)
        elif registered.events != events:
            self.sel.modify(peer.sock, events, peer.rank)

    def _poll(self, timeout: float) -> None:
        for key, mask in self.sel.select(timeout):
            if key.data is None:
                self._drain_wakeup()
                continue
            peer = self.peers[key.data]
            if mask & selectors.EVENT_READ:
                self._read(peer)
            if mask & selectors.EVENT_WRITE and peer.tx:
                self._flush(peer)

    def _read(self, peer: _Peer) -> None:
        try:
            n = peer.sock.recv_into(self._rx)
        except BlockingIOError:
            return
        except OSError as exc:
            if self._draining:
                peer.eof = True
                peer.tx.clear()
                self._interest(peer)
                return
            raise OSError(exc.errno, f"receive from rank {peer.rank}: {exc.strerror}") from exc
        if n == 0:
            if not (peer.parser.at_boundary or self._draining):
                raise wire.WireError(f"rank {peer.rank} closed the connection inside a message")
            peer.eof = True
            self._interest(peer)
            return
        self.totals.bytes_received += n
        if self._draining:
            return  # the run is over: count, do not interpret
        for iteration in peer.parser.feed(memoryview(self._rx)[:n]):
            self.progress.on_message(peer.rank, iteration)

    def _drain_wakeup(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except BlockingIOError:
            pass

    # ------------------------------------------------------------ the end

    def _drain(self) -> None:
        """Send what is queued, shut our side, read until each neighbour shut theirs."""
        self._draining = True
        for peer in self.peers.values():  # set-up may have ended before registering them
            self._interest(peer)
        deadline = time.monotonic() + self.params.drain_timeout_s
        while True:
            for peer in self.peers.values():
                if not peer.tx and not peer.shut:
                    peer.shut = True
                    try:
                        peer.sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        peer.eof = True  # already gone
                        self._interest(peer)
            left = deadline - time.monotonic()
            if left <= 0 or all(peer.eof and peer.shut for peer in self.peers.values()):
                break
            self._poll(left)
        unfinished = [r for r, peer in self.peers.items() if not peer.eof]
        if unfinished:
            self.log.warning("neighbours still running at the end", ranks=unfinished,
                             waited_s=self.params.drain_timeout_s)

    def close(self) -> None:
        for peer in self.peers.values():
            peer.sock.close()
        for s in self._dialling.values():
            s.close()
        self.sel.close()
        self._wake_r.close()
        self._wake_w.close()
