"""Bus benchmark: the vnet broker path against raw pyzmq PUB→SUB, side by side.

Two paths carry the same 200-byte envelopes between two real processes:

- vnet: BusClient.publish → `vnet broker` (its own process) → BusClient
  receive (every message decoded and checked, as services see them);
- raw: a pyzmq PUB (an XPUB, so the publisher can see the subscription
  arrive) → SUB, sending the same bytes with no broker and no checks.

Throughput: the publisher sends a fixed number of messages as fast as it can;
the receiver's rate is messages received over the time from the first to the
last. Latency: the publisher paces messages at a fixed rate with its
monotonic clock (shared by processes on one machine) inside the payload, and
the receiver subtracts it from its own clock on arrival. Each measurement
repeats, paths interleaved, and the median is reported. Processes start with
a handshake (ready replies over a pipe, the bus's own probe, the XPUB's
subscription event) and are stopped, even on failure, by whoever started them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import statistics
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TypeVar

import numpy as np
import zmq

from bench.report import RESULTS_DIR, BenchOutput, Goal
from services.bus import envelope, topics
from services.bus import log as buslog
from services.bus.client import BusClient
from services.bus.envelope import BusMessage
from services.bus.launch import Launcher
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings


@dataclass(frozen=True)
class BusBenchSettings:
    """What the benchmark measures; the defaults keep the run under a minute."""

    envelope_bytes: int = 200  # serialised Envelope, as both paths send it
    flood_messages: int = 100_000  # per throughput round
    flood_repeats: int = 5  # throughput rounds per path; the median is reported
    paced_rate_hz: float = 10_000.0  # latency is measured at this rate
    paced_seconds: float = 1.5  # per latency round
    paced_repeats: int = 3  # latency rounds per path; the median is reported
    idle_s: float = 0.5  # a receiver ends a round after this long without messages
    reply_timeout_s: float = 30.0  # a worker that stays silent this long fails the run
    throughput_ratio_goal: float = 0.5  # vnet / raw
    p99_goal_ms: float = 1.0


TOPIC = topics.join(topics.HEARTBEAT, "bench", "pub")
_STAMP = struct.Struct("<IQ")  # round, sent monotonic_ns: the raw path's payload head
_PR_SET_TIMERSLACK = 29
T = TypeVar("T")
_CLK_TCK = os.sysconf("SC_CLK_TCK")

# ---------------------------------------------------------------- pipe messages


@dataclass(frozen=True)
class Flood:
    """Publisher: send count messages as fast as possible."""

    round: int
    count: int


@dataclass(frozen=True)
class Paced:
    """Publisher: send count messages at rate_hz, each stamped when sent."""

    round: int
    count: int
    rate_hz: float


@dataclass(frozen=True)
class Expect:
    """Receiver: collect up to count messages of this round."""

    round: int
    count: int
    latency: bool  # record one-way latencies (paced rounds)
    idle_s: float


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Ready:
    endpoint: str = ""  # the raw publisher's bound endpoint


@dataclass(frozen=True)
class Sent:
    count: int
    seconds: float


@dataclass(frozen=True)
class Received:
    count: int
    first_ns: int
    last_ns: int
    envelope_bytes: int
    latencies_ns: bytes = b""  # int64 array

    @property
    def rate(self) -> float:
        span = (self.last_ns - self.first_ns) / 1e9
        return (self.count - 1) / span if self.count > 1 and span > 0 else 0.0


# ---------------------------------------------------------------- payloads


def _heartbeat(round_: int, sent_ns: int, pad: str) -> pb.Heartbeat:
    return pb.Heartbeat(
        service="bench", host="pub", version=pad,
        counters={"round": round_, "sent_ns": sent_ns},
    )


def padding_for(envelope_bytes: int) -> str:
    """Version-string padding that makes a bench Envelope envelope_bytes long.

    Sized with the largest instance and a 3-byte sequence number, so real
    envelopes are at most that long (and at most a few bytes shorter).
    """
    def size(pad: str) -> int:
        _, body = envelope.encode(
            TOPIC, "bench@pub", (1 << 64) - 1, 100_000, time.time(),
            _heartbeat(1, time.monotonic_ns(), pad),
        )
        return len(body)

    # The field's tag and length prefix come on top of the padding itself.
    for n in range(envelope_bytes - size(""), -1, -1):
        if size("x" * n) <= envelope_bytes:
            return "x" * n
    raise ValueError(f"envelope_bytes={envelope_bytes} is below the smallest envelope")


def raw_body(sample: bytes, round_: int, sent_ns: int) -> bytes:
    """The raw path's body: a sample envelope's length, its head a stamp."""
    return _STAMP.pack(round_, sent_ns) + sample[_STAMP.size:]


# ---------------------------------------------------------------- workers (I/O)


def _quiet_logs(name: str) -> None:
    # Gap warnings (PUB drops at the HWM when flooded) would cost more than
    # the messages; errors still show.
    buslog.configure(name, "bench", json_lines=True, level="error")


def _precise_sleep() -> None:
    """Ask Linux for 1 ns timer slack, so pacing sleeps end on time."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)


def _publish_stamped(client: BusClient, round_: int, pad: str, now_ns: int) -> None:
    client.publish(TOPIC, _heartbeat(round_, now_ns, pad))


def _send_stamped(sock: zmq.Socket[bytes], sample: bytes, round_: int, now_ns: int) -> None:
    sock.send_multipart([TOPIC.encode(), raw_body(sample, round_, now_ns)], zmq.NOBLOCK)


def _stamp(msg: BusMessage) -> tuple[int, int]:
    """(round, sent monotonic_ns) of a bench message."""
    payload = msg.payload
    if not isinstance(payload, pb.Heartbeat):
        raise TypeError(f"bench topic carried {msg.kind}, not a heartbeat")
    return payload.counters["round"], payload.counters["sent_ns"]


def _pace(count: int, rate_hz: float, send: Callable[[int], None]) -> None:
    """Call send(now_ns) count times at rate_hz, sleeping (not spinning) between."""
    interval = round(1e9 / rate_hz)
    due = time.monotonic_ns() + interval
    for _ in range(count):
        while (wait := due - time.monotonic_ns()) > 0:
            time.sleep(wait / 1e9)
        send(time.monotonic_ns())
        due += interval


def _vnet_publisher(conn: Connection, bus: BusSettings, pad: str) -> None:
    _quiet_logs("bench-pub")
    _precise_sleep()

    async def run() -> None:
        with BusClient(bus, "bench", "pub") as client:
            await client.ready()
            conn.send(Ready())
            while not isinstance(cmd := conn.recv(), Stop):
                started = time.monotonic()
                if isinstance(cmd, Flood):
                    payload = _heartbeat(cmd.round, time.monotonic_ns(), pad)
                    for _ in range(cmd.count):
                        client.publish(TOPIC, payload)
                elif isinstance(cmd, Paced):
                    _pace(cmd.count, cmd.rate_hz, partial(_publish_stamped, client, cmd.round, pad))
                conn.send(Sent(cmd.count, time.monotonic() - started))

    asyncio.run(run())


def _vnet_receiver(conn: Connection, bus: BusSettings) -> None:
    _quiet_logs("bench-rx")

    async def collect(client: BusClient, cmd: Expect) -> Received:
        count = first = last = size = 0
        lat: list[int] = []
        deadline = time.monotonic() + cmd.idle_s * 20
        while count < cmd.count:
            batch = await client.recv_batch(cmd.idle_s if count else 0.05)
            now = time.monotonic_ns()
            if not batch:
                if count or time.monotonic() > deadline:
                    break
                continue
            # One publisher, in order: only a batch's head can be a late
            # message of an earlier round.
            if _stamp(batch[0])[0] != cmd.round:
                batch = [m for m in batch if _stamp(m)[0] == cmd.round]
                if not batch:
                    continue
            if not count:
                first = now
                size = batch[0].size - len(batch[0].topic.encode())
            count += len(batch)
            last = now
            if cmd.latency:
                lat.extend(now - _stamp(m)[1] for m in batch)
        return Received(count, first, last, size, np.array(lat, np.int64).tobytes())

    async def run() -> None:
        with BusClient(bus, "bench", "rx") as client:
            client.subscribe(TOPIC)
            await client.ready()
            conn.send(Ready())
            while not isinstance(cmd := conn.recv(), Stop):
                conn.send(Ready())
                conn.send(await collect(client, cmd))

    asyncio.run(run())


def _raw_publisher(conn: Connection, hwm: int, sample: bytes) -> None:
    _precise_sleep()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)  # a PUB that reports subscriptions
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.bind("tcp://127.0.0.1:*")
    conn.send(Ready(sock.getsockopt_string(zmq.LAST_ENDPOINT)))
    topic = TOPIC.encode()
    try:
        if not sock.poll(30_000):
            raise TimeoutError("raw publisher: no subscriber within 30 s")
        sock.recv()  # the subscription: from now on the receiver gets everything
        conn.send(Ready())
        while not isinstance(cmd := conn.recv(), Stop):
            started = time.monotonic()
            if isinstance(cmd, Flood):
                frames = [topic, raw_body(sample, cmd.round, time.monotonic_ns())]
                for _ in range(cmd.count):
                    sock.send_multipart(frames, zmq.NOBLOCK)
            elif isinstance(cmd, Paced):
                _pace(cmd.count, cmd.rate_hz, partial(_send_stamped, sock, sample, cmd.round))
            conn.send(Sent(cmd.count, time.monotonic() - started))
    finally:
        sock.close(linger=0)
        ctx.term()


def _raw_receiver(conn: Connection, hwm: int, endpoint: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.connect(endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, TOPIC.encode())

    def collect(cmd: Expect) -> Received:
        count = first = last = size = 0
        lat: list[int] = []
        tag = struct.pack("<I", cmd.round)
        deadline = time.monotonic() + cmd.idle_s * 20
        while count < cmd.count:
            if not sock.poll(int((cmd.idle_s if count else 0.05) * 1000)):
                if count or time.monotonic() > deadline:
                    break
                continue
            got = 0
            while got < 1000:
                try:
                    _, body = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if body.startswith(tag):
                    got += 1
                    if cmd.latency:
                        lat.append(time.monotonic_ns() - _STAMP.unpack_from(body)[1])
                    elif not size:
                        size = len(body)
            if got:
                last = time.monotonic_ns()  # like vnet: when the whole batch is in hand
                first = first or last
                count += got
        return Received(count, first, last, size, np.array(lat, np.int64).tobytes())

    try:
        conn.send(Ready())
        while not isinstance(cmd := conn.recv(), Stop):
            conn.send(Ready())
            conn.send(collect(cmd))
    finally:
        sock.close(linger=0)
        ctx.term()


# ---------------------------------------------------------------- orchestration


@dataclass
class Worker:
    """A child process and our end of its pipe."""

    name: str
    process: BaseProcess
    conn: Connection

    @property
    def pid(self) -> int:
        if self.process.pid is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.process.pid

    def ask(self, timeout: float) -> object:
        if not self.conn.poll(timeout):
            state = "alive" if self.process.is_alive() else f"exit {self.process.exitcode}"
            raise TimeoutError(f"{self.name}: no reply within {timeout:.0f}s ({state})")
        try:
            return self.conn.recv()
        except EOFError:
            raise RuntimeError(
                f"{self.name} died (exit code {self.process.exitcode}); see its traceback above"
            ) from None

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(Stop())
            self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


@dataclass
class Pair:
    """A publisher and a receiver joined by one path (and its broker's pid)."""

    path: str
    publisher: Worker
    receiver: Worker
    broker_pid: int | None = None
    floods: list[Received] = field(default_factory=list)
    paced: list[Received] = field(default_factory=list)
    flood_cpu_us: list[dict[str, float]] = field(default_factory=list)  # per message
    paced_cpu_us: list[dict[str, float]] = field(default_factory=list)

    def pids(self) -> dict[str, int]:
        pids = {"publisher": self.publisher.pid, "receiver": self.receiver.pid}
        if self.broker_pid is not None:
            pids["broker"] = self.broker_pid
        return pids

    def run(self, pub_cmd: Flood | Paced, expect: Expect, timeout: float) -> Received:
        self.receiver.conn.send(expect)
        _expect(self.receiver, Ready, timeout)
        cpu_before = {name: cpu_seconds(pid) for name, pid in self.pids().items()}
        self.publisher.conn.send(pub_cmd)
        _expect(self.publisher, Sent, timeout)
        got = _expect(self.receiver, Received, timeout)
        (self.flood_cpu_us if isinstance(pub_cmd, Flood) else self.paced_cpu_us).append({
            name: round((cpu_seconds(pid) - cpu_before[name]) / pub_cmd.count * 1e6, 2)
            for name, pid in self.pids().items()
        })
        return got


def _expect(worker: Worker, kind: type[T], timeout: float) -> T:
    reply = worker.ask(timeout)
    if not isinstance(reply, kind):
        raise RuntimeError(f"{worker.name} sent {reply!r}, expected {kind.__name__}")
    return reply


class Workers:
    """Starts workers with spawn (no inherited ZeroMQ state) and stops them all."""

    def __init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self.started: list[Worker] = []

    def start(self, name: str, target: Callable[..., None], *args: object) -> Worker:
        ours, theirs = self._ctx.Pipe()
        process = self._ctx.Process(target=target, args=(theirs, *args), name=name, daemon=True)
        process.start()
        theirs.close()
        worker = Worker(name, process, ours)
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in reversed(self.started):
            worker.stop()
        self.started.clear()


@contextlib.contextmanager
def _pairs(cfg: BusBenchSettings, progress: Callable[[str], None]) -> Iterator[list[Pair]]:
    pad = padding_for(cfg.envelope_bytes)
    _, sample = envelope.encode(TOPIC, "bench@pub", (1 << 64) - 1, 100_000, time.time(),
                                _heartbeat(1, time.monotonic_ns(), pad))
    workers = Workers()
    with Launcher() as launcher:
        try:
            broker = launcher.start_broker()
            bus = BusSettings(pub=str(broker.info["pub"]), sub=str(broker.info["sub"]))
            progress(f"broker up at {bus.pub} / {bus.sub}; starting workers")
            t = cfg.reply_timeout_s
            raw_pub = workers.start("raw publisher", _raw_publisher, bus.hwm, sample)
            endpoint = _expect(raw_pub, Ready, t).endpoint
            raw_rx = workers.start("raw receiver", _raw_receiver, bus.hwm, endpoint)
            vnet_pub = workers.start("vnet publisher", _vnet_publisher, bus, pad)
            vnet_rx = workers.start("vnet receiver", _vnet_receiver, bus)
            for worker in (raw_pub, raw_rx, vnet_pub, vnet_rx):
                _expect(worker, Ready, t)
            progress("all workers ready")
            yield [Pair("raw", raw_pub, raw_rx), Pair("vnet", vnet_pub, vnet_rx, broker.popen.pid)]
        finally:
            workers.stop_all()


# ---------------------------------------------------------------- figures (pure)


def latency_summary(latencies_us: np.ndarray) -> dict[str, float]:
    p50, p90, p99, p999 = np.percentile(latencies_us, [50, 90, 99, 99.9])
    return {
        "p50_us": round(float(p50), 1), "p90_us": round(float(p90), 1),
        "p99_us": round(float(p99), 1), "p99.9_us": round(float(p999), 1),
        "max_us": round(float(latencies_us.max()), 1), "samples": int(latencies_us.size),
    }


def as_us(received: Received) -> np.ndarray:
    return np.frombuffer(received.latencies_ns, np.int64) / 1000.0


@dataclass(frozen=True)
class PathFigures:
    """One path's figures: medians over the rounds, and the rounds themselves."""

    throughput_msg_s: float
    throughput_rounds_msg_s: list[float]
    cpu_us_per_msg: dict[str, float]  # CPU (all threads) per message, by process
    flood_received: list[int]
    envelope_bytes: int
    latency_p50_us: float
    latency_p99_us: float
    latency_rounds: list[dict[str, float]]
    paced_cpu_us_per_msg: dict[str, float]
    paced_received: list[int]


def path_figures(pair: Pair) -> PathFigures:
    rates = [float(round(r.rate)) for r in pair.floods]
    per_round = [latency_summary(as_us(r)) for r in pair.paced]
    return PathFigures(
        throughput_msg_s=statistics.median(rates),
        throughput_rounds_msg_s=rates,
        cpu_us_per_msg=median_cpu(pair.flood_cpu_us),
        flood_received=[r.count for r in pair.floods],
        envelope_bytes=pair.floods[0].envelope_bytes if pair.floods else 0,
        latency_p50_us=round(statistics.median(s["p50_us"] for s in per_round), 1),
        latency_p99_us=round(statistics.median(s["p99_us"] for s in per_round), 1),
        latency_rounds=per_round,
        paced_cpu_us_per_msg=median_cpu(pair.paced_cpu_us),
        paced_received=[r.count for r in pair.paced],
    )


def median_cpu(rounds: list[dict[str, float]]) -> dict[str, float]:
    out = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]} if rounds else {}
    out["total"] = round(sum(out.values()), 2)
    return out


def throughput_ratio(raw: PathFigures, vnet: PathFigures) -> float:
    """Median over rounds of vnet / raw, each pair of rounds run back to back.

    Pairing cancels most of the drift in what else the machine is doing.
    """
    ratios = [
        v / r for r, v in zip(raw.throughput_rounds_msg_s, vnet.throughput_rounds_msg_s,
                              strict=True) if r
    ]
    return round(statistics.median(ratios), 3) if ratios else 0.0


def judge(raw: PathFigures, vnet: PathFigures, cfg: BusBenchSettings) -> list[Goal]:
    return [
        Goal.at_least("vnet throughput / raw pyzmq throughput", cfg.throughput_ratio_goal,
                      throughput_ratio(raw, vnet), "ratio"),
        Goal.below(f"vnet one-way latency p99 at {cfg.paced_rate_hz:g} msg/s", cfg.p99_goal_ms,
                   round(vnet.latency_p99_us / 1000.0, 3), "ms"),
    ]


def plot(pairs: list[Pair], path: Path, cfg: BusBenchSettings) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for pair in pairs:
        lat = np.sort(np.concatenate([as_us(r) for r in pair.paced]))
        if not lat.size:
            continue
        cdf = np.arange(1, lat.size + 1) / lat.size
        p50, p99 = np.percentile(lat, [50, 99])
        ax.plot(lat, cdf, label=f"{pair.path}: p50 {p50:.0f} µs, p99 {p99:.0f} µs")
    ax.axvline(cfg.p99_goal_ms * 1000, color="grey", linestyle="--", label="p99 goal")
    ax.set_xscale("log")
    ax.set_xlabel("one-way latency (µs)")
    ax.set_ylabel("fraction of messages")
    ax.set_title(f"bus latency, {cfg.envelope_bytes}-byte envelopes at {cfg.paced_rate_hz:g} msg/s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- entry point


def main(progress: Callable[[str], None], cfg: BusBenchSettings | None = None) -> BenchOutput:
    cfg = cfg or BusBenchSettings()
    t = cfg.reply_timeout_s
    paced_count = int(cfg.paced_rate_hz * cfg.paced_seconds)
    with _pairs(cfg, progress) as pairs:
        round_ = 0
        for rep in range(cfg.flood_repeats):
            for pair in pairs:
                round_ += 1
                got = pair.run(Flood(round_, cfg.flood_messages),
                               Expect(round_, cfg.flood_messages, False, cfg.idle_s), t)
                pair.floods.append(got)
                cpu = ", ".join(f"{k} {v:.1f}" for k, v in pair.flood_cpu_us[-1].items())
                progress(f"throughput {rep + 1}/{cfg.flood_repeats} {pair.path}: "
                         f"{got.rate:,.0f} msg/s ({got.count:,}/{cfg.flood_messages:,} received;"
                         f" CPU µs/msg: {cpu})")
        for rep in range(cfg.paced_repeats):
            for pair in pairs:
                round_ += 1
                got = pair.run(Paced(round_, paced_count, cfg.paced_rate_hz),
                               Expect(round_, paced_count, True, cfg.idle_s), t)
                pair.paced.append(got)
                s = latency_summary(as_us(got))
                cpu = ", ".join(f"{k} {v:.1f}" for k, v in pair.paced_cpu_us[-1].items())
                progress(f"latency {rep + 1}/{cfg.paced_repeats} {pair.path}: "
                         f"p50 {s['p50_us']} µs, p99 {s['p99_us']} µs "
                         f"({got.count:,}/{paced_count:,} received;"
                         f" CPU µs/msg: {cpu})")
    raw, vnet = (path_figures(pair) for pair in pairs)
    png = RESULTS_DIR / "bus_latency.png"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    plot(pairs, png, cfg)
    progress(f"latency CDF in {png}")
    results: dict[str, object] = {
        "settings": {
            "envelope_bytes": cfg.envelope_bytes, "flood_messages": cfg.flood_messages,
            "paced_rate_hz": cfg.paced_rate_hz, "paced_messages": paced_count,
            "flood_repeats": cfg.flood_repeats, "paced_repeats": cfg.paced_repeats,
            "transport": "tcp loopback",
            "statistic": "median over rounds; throughput_ratio is the median of per-round"
                         " vnet/raw ratios (rounds of the two paths run back to back)",
        },
        "raw_pyzmq": asdict(raw),
        "vnet": asdict(vnet),
        "throughput_ratio": throughput_ratio(raw, vnet),
        "latency_plot": png.name,
    }
    return BenchOutput(results, judge(raw, vnet, cfg))
