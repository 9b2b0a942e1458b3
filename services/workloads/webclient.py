"""The web site's load client: back-to-back short wrk runs, one AppReport per run.

wrk prints its figures only at the end of a run, so the client runs it for one
report interval at a time (whole seconds: wrk's -d takes no fractions) and
publishes each run as an AppReport on app.web.<guest>: iterations are the
requests completed since the start, iterations_per_s this run's requests per
second, and error names the failed requests (non-2xx answers, connect, read,
write errors and time-outs) when there were any. Before the first run it
checks that a page (front, app, db) and an image (front, img) answer through
the front, then prints a ready line. A new connection per run costs a few
handshakes a second; wrk itself needs well under 10 ms to start.

One asyncio loop; wrk runs in its own session so a SIGTERM to the client's
process group ends a run cleanly (SIGINT makes wrk stop early and still
report) instead of killing wrk before it reports.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.bus.pb import vnet_pb2 as pb
from services.workloads import webconf

FAIL_KINDS = ("status", "connect", "read", "write", "timeout")
HEALTH_RETRY_S = 0.2
WRK_GRACE_S = 5.0  # beyond the run's length, before wrk is killed

Publish = Callable[[pb.AppReport], None]


class WrkError(RuntimeError):
    """wrk did not run or printed no figures."""


@dataclass(frozen=True)
class WrkRun:
    """One wrk run's figures (what the script's done() prints)."""

    requests: int
    bytes: int
    duration_s: float
    status: int = 0    # answers other than 2xx/3xx (counted in requests too)
    connect: int = 0
    read: int = 0
    write: int = 0
    timeout: int = 0
    latency_mean_ms: float = 0.0
    latency_p99_ms: float = 0.0

    @property
    def failed(self) -> int:
        return sum(getattr(self, k) for k in FAIL_KINDS)

    @property
    def ok(self) -> int:
        return max(0, self.requests - self.status)

    def failures(self) -> str:
        """'3 failed requests (status 2, read 1)', or '' when none failed."""
        kinds = [f"{k} {getattr(self, k)}" for k in FAIL_KINDS if getattr(self, k)]
        return f"{self.failed} failed requests ({', '.join(kinds)})" if kinds else ""


def parse_wrk(output: str) -> WrkRun:
    """The figures from wrk's stdout: the last line the script's done() printed."""
    for line in reversed(output.splitlines()):
        if line.startswith('{"wrk":'):
            d = json.loads(line)
            return WrkRun(
                requests=int(d["requests"]), bytes=int(d["bytes"]),
                duration_s=int(d["duration_us"]) / 1e6,
                **{k: int(d[k]) for k in FAIL_KINDS},
                latency_mean_ms=float(d["latency_mean_us"]) / 1e3,
                latency_p99_ms=float(d["latency_p99_us"]) / 1e3)
    raise WrkError(f"no figures in wrk's output: {output.strip()[-500:]!r}")


@dataclass
class LoadTotals:
    """Everything since the start; turns each run into its AppReport."""

    guest: str
    requests: int = 0
    ok: int = 0
    bytes: int = 0
    duration_s: float = 0.0
    runs: int = 0
    failed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAIL_KINDS, 0))
    last_error: str = ""   # the latest run's failed requests, if any run had some
    error: str = ""        # why the load ended early (wrk failed); empty when it did not

    def add(self, run: WrkRun, done: bool = False) -> pb.AppReport:
        self.requests += run.requests
        self.ok += run.ok
        self.bytes += run.bytes
        self.duration_s += run.duration_s
        self.runs += 1
        for k in FAIL_KINDS:
            self.failed[k] += getattr(run, k)
        error = run.failures()
        if error:
            self.last_error = error
        return self.report(run.requests / run.duration_s if run.duration_s > 0 else 0.0,
                           run.duration_s, error, done)

    def report(self, rate: float, interval_s: float, error: str,
               done: bool = False) -> pb.AppReport:
        return pb.AppReport(
            app=webconf.APP, guest=self.guest, rank=0, workers=1, topology="web",
            iterations=self.requests, iterations_per_s=rate, bytes_received=self.bytes,
            interval_s=interval_s, done=done, error=error)

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def summary(self) -> dict[str, object]:
        d = asdict(self)
        d["failed_total"] = self.failed_total
        d["requests_per_s"] = self.requests / self.duration_s if self.duration_s else 0.0
        return d


@dataclass(frozen=True)
class LoadParams:
    front: str                   # the front's ip (its port is webconf.FRONT_PORT)
    guest: str = "client"
    connections: int = 8
    threads: int = 1
    interval_s: int = 1          # one wrk run (and one report) per interval
    timeout_s: float = 2.0       # wrk --timeout: a slower answer counts as failed
    duration_s: float = 0.0      # 0: until SIGTERM
    items: int = webconf.Catalogue().items
    image_share: float = 0.3
    ready_timeout_s: float = 60.0
    wrk: str = "wrk"

    def check(self) -> None:
        if self.interval_s < 1:
            raise ValueError(f"interval_s must be a whole number of seconds >= 1 "
                             f"(got {self.interval_s}): wrk's -d takes whole seconds")
        if self.connections < self.threads or self.threads < 1:
            raise ValueError(f"need 1 <= threads <= connections (got {self.threads} threads,"
                             f" {self.connections} connections)")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 (got {self.timeout_s})")
        webconf.wrk_script(self.items, self.image_share)  # checks items, image_share

    def wrk_argv(self, script: Path, seed: int) -> list[str]:
        url = f"http://{webconf.bare_ip(self.front)}:{webconf.FRONT_PORT}/"
        return [self.wrk, "-t", str(self.threads), "-c", str(self.connections),
                "-d", f"{self.interval_s}s", "--timeout", f"{self.timeout_s:g}s",
                "-s", str(script), url, "--", str(seed)]


async def http_status(host: str, port: int, path: str, timeout: float) -> int:
    """One GET's status code (0 when nothing answered); reads the whole answer."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return 0
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                     .encode())
        data = await asyncio.wait_for(reader.read(), timeout)
    except (OSError, TimeoutError):
        return 0
    finally:
        writer.close()
    parts = data.split(b" ", 2)
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 0


async def wait_ready(params: LoadParams, stop: asyncio.Event) -> None:
    """Until a page and an image answer 200 through the front; TimeoutError if not."""
    host = webconf.bare_ip(params.front)
    image = f"/img/{webconf.image_names()[0][0]}"
    deadline = time.monotonic() + params.ready_timeout_s
    last: dict[str, int] = {}
    while not stop.is_set():
        for path in (webconf.HEALTH_PATH, image):
            last[path] = await http_status(host, webconf.FRONT_PORT, path, 2.0)
        if all(code == 200 for code in last.values()):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the site at {host} did not answer within "
                               f"{params.ready_timeout_s:g}s (status by path: {last})")
        await asyncio.sleep(HEALTH_RETRY_S)


class WrkRunner:
    """Runs wrk to its end without threads: a reader on its stdout, then a reap."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.interrupted = False

    async def run(self, argv: list[str], limit_s: float) -> WrkRun:
        loop = asyncio.get_running_loop()
        proc = self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, start_new_session=True)
        assert proc.stdout is not None and proc.stderr is not None
        out = bytearray()
        eof = loop.create_future()
        fd = proc.stdout.fileno()

        def readable() -> None:
            chunk = os.read(fd, 65536)
            if chunk:
                out.extend(chunk)
            elif not eof.done():
                eof.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await asyncio.wait_for(eof, limit_s)
            code = proc.wait(timeout=WRK_GRACE_S)
            err = proc.stderr.read().decode(errors="replace")
        except TimeoutError:
            raise WrkError(f"wrk ran past {limit_s:g}s") from None
        finally:
            loop.remove_reader(fd)
            self._reap(proc)
            self.proc = None
        text = out.decode(errors="replace")
        if code == -signal.SIGINT and self.interrupted:
            # Interrupted before wrk set its SIGINT handler up: a run that did nothing.
            return WrkRun(requests=0, bytes=0, duration_s=0.0)
        if code != 0:
            raise WrkError(f"wrk exited with {code}: {(err or text).strip()[-500:]}")
        return parse_wrk(text)

    def interrupt(self) -> None:
        """End the current run early; wrk still reports what it did (SIGINT)."""
        self.interrupted = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


async def run_load(params: LoadParams, publish: Publish | None,
                   on_ready: Callable[[], None] = lambda: None) -> LoadTotals:
    """Wait for the site, then run wrk until the duration is over or SIGTERM/SIGINT."""
    params.check()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    runner = WrkRunner()

    def on_signal() -> None:
        stop.set()
        runner.interrupt()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    totals = LoadTotals(params.guest)
    with tempfile.TemporaryDirectory(prefix="vnet-web-client-") as tmp:
        script = Path(tmp) / "mix.lua"
        script.write_text(webconf.wrk_script(params.items, params.image_share))
        await wait_ready(params, stop)
        on_ready()
        started = time.monotonic()
        seed = 0
        finished = False
        while not stop.is_set() and not finished:
            seed += 1
            try:
                run = await runner.run(params.wrk_argv(script, seed),
                                       params.interval_s + params.timeout_s + WRK_GRACE_S)
            except WrkError as exc:
                totals.error = str(exc)
                break
            finished = stop.is_set() or (
                bool(params.duration_s) and time.monotonic() - started >= params.duration_s)
            report = totals.add(run, done=finished)
            if publish is not None:
                publish(report)
        if not finished and publish is not None:
            # Stopped before a run began, or wrk failed: the last report says so.
            publish(totals.report(0.0, 0.0, totals.error, done=True))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    return totals
