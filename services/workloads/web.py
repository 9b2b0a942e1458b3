"""Start the multi-tier web site in the guests of a testbed, load it, and take it down.

    with WebSite(tb, {"front": "g1", "app": "g2", "db": "g3", "img": "g4",
                      "client": "g5"}, bus) as site:
        ...  # reports arrive on app.web.<client guest>; ReportCollector(bus, app="web")
        load = site.load_image_server(hogs=1, cpu_limit=0.25)  # "a loaded image server"
        ...
        load.release()  # the image server's guest left the loaded host

The servers start together and are checked in dependency order: PostgreSQL
in the db guest (initdb into the site's work directory, as the postgres
user; ready once its log says so), the application server in the app guest
(retries the database, loads the catalogue, then prints a ready line), nginx
as image server in the img guest and as front in the front guest (ready once
its pid file is written, i.e. it listens). Last comes the load client in the
client guest, ready only when a page and an image answered through the
front, so the whole path over vnet works before the first report. On exit,
or on a failure part way, everything is stopped in reverse order and the
work directory is removed.

Takes the testbed duck-typed (guest(name) with .ip, .prefix_len, .netns;
popen(netns, argv, **kw)), as the Patterns launcher does.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from services.bus.launch import stop_process
from services.bus.settings import BusSettings
from services.workloads import webconf
from services.workloads.webconf import Catalogue
from services.workloads.webhog import CpuLoad

ROOT = Path(__file__).resolve().parents[2]
# The `vnet web` commands, without importing every other area's CLI (see webcli).
WEB = [sys.executable, "-m", "services.workloads.webcli"]
TIERS = ("front", "app", "db", "img", "client")
PG_USER = "postgres"
STOP_S = 10.0


class WebSiteError(RuntimeError):
    """A tier did not start; the message names it and ends with its log."""


@dataclass(frozen=True)
class WebSettings:
    """The site's knobs; the defaults suit a 2-core machine."""

    catalogue: Catalogue = field(default_factory=Catalogue)
    connections: int = 8          # wrk's concurrent connections (closed loop)
    wrk_threads: int = 1
    image_share: float = 0.3      # share of requests that are images (the rest are pages)
    report_interval_s: int = 1    # one wrk run and one AppReport per interval
    request_timeout_s: float = 2.0  # a slower answer counts as a failed request
    duration_s: float = 0.0       # 0: load until stop_load() or exit
    app_pool: int = 8             # the application server's database connections
    ready_timeout_s: float = 60.0
    start_load: bool = True       # start the client on entry (else call start_load())


def postgres_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian keeps it off PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if found:
        return found[-1].parent
    on_path = shutil.which("postgres")
    return Path(on_path).resolve().parent if on_path else None


def missing_tools() -> list[str]:
    """What this machine lacks to run the site (`make apt` installs the packages)."""
    missing = [tool for tool in ("nginx", "wrk", "setpriv") if shutil.which(tool) is None]
    bindir = postgres_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        missing.append("postgresql (postgres, initdb)")
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        missing.append(f"user {PG_USER}")
    try:
        pwd.getpwnam(webconf.NGINX_USER)
    except KeyError:
        missing.append(f"user {webconf.NGINX_USER}")
    return missing


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


class WebSite:
    """The site's five tiers in five guests; a context manager that owns every process.

    guests maps each tier (TIERS) to a guest name. logs: where each tier's
    log goes (web-<tier>.log; default inside the work directory, removed at
    the end). workdir: where the work directory is made (default the system's
    temporary directory); the postgres and www-data users must reach it.
    """

    def __init__(self, tb: Any, guests: Mapping[str, str], bus: BusSettings | None,
                 settings: WebSettings | None = None, logs: Path | None = None,
                 workdir: Path | None = None) -> None:
        unknown = set(guests) - set(TIERS)
        missing = set(TIERS) - set(guests)
        if unknown or missing:
            raise ValueError(f"guests must name exactly the tiers {', '.join(TIERS)} "
                             f"(unknown: {sorted(unknown)}, missing: {sorted(missing)})")
        self.tb = tb
        self.guests = dict(guests)
        self.bus = bus
        self.settings = settings or WebSettings()
        self.settings.catalogue.check()
        self._logs_arg = logs
        self._workdir_arg = workdir
        self.workdir = Path()
        self.logs = Path()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.loads: list[CpuLoad] = []
        self.load_summary: dict[str, Any] = {}
        self._stack = ExitStack()

    # --- where things are -----------------------------------------------------

    def ip(self, tier: str) -> str:
        return webconf.bare_ip(str(self.tb.guest(self.guests[tier]).ip))

    def netns(self, tier: str) -> str:
        return str(self.tb.guest(self.guests[tier]).netns)

    def log(self, tier: str) -> Path:
        return self.logs / f"web-{tier}.log"

    # --- lifecycle ------------------------------------------------------------

    def __enter__(self) -> WebSite:
        missing = missing_tools()
        if missing:
            raise WebSiteError(f"cannot run the web site without: {', '.join(missing)} "
                               "(`make apt` installs them)")
        try:
            self._make_workdir()
            # After the work directory's removal was registered: runs before it.
            self._stack.callback(self._stop_all)
            # Started together, checked in order: the app server retries the database
            # and nginx does not need its upstreams to listen, so the starts overlap.
            self._start_db()
            self._start_app()
            self._start_nginx("img")
            self._start_nginx("front")
            self._wait("db", lambda: "ready to accept connections" in
                       _tail(self.log("db"), 100_000), "'ready to accept connections' in its log")
            self._wait_ready_line("app")
            for tier in ("img", "front"):
                self._wait(tier, (self.workdir / tier / "nginx.pid").exists,
                           "pid file (nginx writes it once it listens)")
            if self.settings.start_load:
                self.start_load()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # A second Ctrl-C must not interrupt the teardown half-way.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self._stack.close()
        finally:
            signal.signal(signal.SIGINT, previous)

    def _make_workdir(self) -> None:
        base = None if self._workdir_arg is None else str(self._workdir_arg)
        self.workdir = Path(tempfile.mkdtemp(prefix="vnet-web-", dir=base))
        self._stack.callback(shutil.rmtree, self.workdir, True)
        # nginx's workers (www-data) and PostgreSQL (postgres) must reach their parts.
        self.workdir.chmod(0o755)
        self.logs = self._logs_arg or self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def _spawn(self, tier: str, argv: list[str], stdout: int = subprocess.DEVNULL
               ) -> subprocess.Popen[bytes]:
        with open(self.log(tier), "ab") as err:
            proc: subprocess.Popen[bytes] = self.tb.popen(
                self.netns(tier), argv, stdout=stdout, stderr=err, cwd=str(ROOT))
        self.procs[tier] = proc
        return proc

    def _fail(self, tier: str, what: str) -> WebSiteError:
        proc = self.procs.get(tier)
        code = proc.poll() if proc is not None else None
        return WebSiteError(f"{tier} ({self.guests[tier]}): {what} (exit code {code}); "
                            f"log {self.log(tier)}:\n{_tail(self.log(tier))}")

    def _wait(self, tier: str, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.settings.ready_timeout_s
        proc = self.procs[tier]
        while not ready():
            if proc.poll() is not None:
                raise self._fail(tier, f"exited before {what}")
            if time.monotonic() >= deadline:
                raise self._fail(tier, f"no {what} within {self.settings.ready_timeout_s:g}s")
            time.sleep(0.05)

    def _wait_ready_line(self, tier: str) -> dict[str, Any]:
        proc = self.procs[tier]
        assert proc.stdout is not None
        deadline = time.monotonic() + self.settings.ready_timeout_s
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([proc.stdout], [], [], left)
            if not readable:
                break
            line = proc.stdout.readline()
            if not line:
                # Its stdout closed: it is exiting; reap it so the error has its exit code.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
                raise self._fail(tier, "exited before its ready line")
            if line.startswith(b'{"ready": true'):
                ready: dict[str, Any] = json.loads(line)
                return ready
        raise self._fail(tier, f"no ready line within {self.settings.ready_timeout_s:g}s")

    def _as_postgres(self, argv: list[str]) -> list[str]:
        return ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups",
                "--", *argv]

    def _start_db(self) -> None:
        bindir = postgres_bindir()
        assert bindir is not None
        db = self.workdir / "db"
        db.mkdir(mode=0o700)
        user = pwd.getpwnam(PG_USER)
        os.chown(db, user.pw_uid, user.pw_gid)
        data = db / "data"
        init = subprocess.run(
            self._as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", webconf.DB_USER,
                               "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync",
                               "--no-instructions"]),
            cwd=str(db), capture_output=True, text=True, timeout=120)
        if init.returncode != 0:
            raise WebSiteError(f"db: initdb failed ({init.returncode}): "
                               f"{(init.stderr or init.stdout)[-2000:]}")
        g = self.tb.guest(self.guests["db"])
        hba = data / "pg_hba.conf"
        hba.write_text(webconf.pg_hba(webconf.subnet(str(g.ip), int(g.prefix_len))))
        os.chown(hba, user.pw_uid, user.pw_gid)
        self._spawn("db", self._as_postgres(
            [str(bindir / "postgres"), "-D", str(data),
             *webconf.postgres_settings(self.ip("db"), db)]))

    def _start_app(self) -> None:
        c = self.settings.catalogue
        argv = [*WEB, "app", "--listen", f"{self.ip('app')}:{webconf.APP_PORT}",
                       "--db", f"{self.ip('db')}:{webconf.DB_PORT}",
                       "--guest", self.guests["app"], "--items", str(c.items),
                       "--authors", str(c.authors), "--customers", str(c.customers),
                       "--orders", str(c.orders), "--pool-size", str(self.settings.app_pool),
                       "--db-timeout-s", str(self.settings.ready_timeout_s)]
        self._spawn("app", argv, stdout=subprocess.PIPE)

    def _start_nginx(self, tier: str) -> None:
        prefix = self.workdir / tier
        (prefix / "temp").mkdir(parents=True)
        if tier == "img":
            www = prefix / "www"
            webconf.write_images(www)
            for path in [www, *www.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            conf = webconf.nginx_img_conf(prefix, self.ip("img"), www)
        else:
            conf = webconf.nginx_front_conf(prefix, self.ip("front"), self.ip("app"),
                                            self.ip("img"))
        (prefix / "nginx.conf").write_text(conf)
        self._spawn(tier, ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                           "-e", "stderr"])

    def start_load(self) -> None:
        """Start the load client; returns once the site answered it through the front."""
        if "client" in self.procs and self.procs["client"].poll() is None:
            raise RuntimeError("the load client is running already")
        s = self.settings
        argv = [*WEB, "client", "--front", self.ip("front"),
                       "--guest", self.guests["client"], "--connections", str(s.connections),
                       "--threads", str(s.wrk_threads), "--interval-s", str(s.report_interval_s),
                       "--timeout-s", str(s.request_timeout_s), "--duration", str(s.duration_s),
                       "--items", str(s.catalogue.items), "--image-share", str(s.image_share),
                       "--ready-timeout-s", str(s.ready_timeout_s)]
        if self.bus is None:
            argv.append("--no-bus")
        else:
            argv += ["--bus-pub", self.bus.pub, "--bus-sub", self.bus.sub]
        self._spawn("client", argv, stdout=subprocess.PIPE)
        self._wait_ready_line("client")

    def stop_load(self) -> dict[str, Any]:
        """Stop the load client (its last report says done) and return its summary:
        requests, ok, failed (by kind), failed_total, requests_per_s, bytes, runs."""
        proc = self.procs.pop("client", None)
        if proc is None:
            return self.load_summary
        if proc.poll() is None:
            # The client alone, not its group: a wrk it is just starting (forked, not
            # yet in a session of its own) must not die before it can report.
            os.kill(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(self.settings.report_interval_s + self.settings.request_timeout_s
                      + STOP_S)
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        stop_process(proc, STOP_S)
        lines = [line for line in out.splitlines()
                 if line.startswith("{") and not line.startswith('{"ready"')]
        self.load_summary = json.loads(lines[-1]) if lines else {}
        self.load_summary["exit_code"] = proc.returncode
        return self.load_summary

    def wait_load(self, timeout: float) -> dict[str, Any]:
        """For a load with a duration: wait for the client to finish; its summary."""
        proc = self.procs.get("client")
        if proc is None:
            return self.load_summary
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"load client still running after {timeout:g}s") from None
        return self.stop_load()

    def load_tier(self, tier: str, hogs: int = 1, cpu_limit: float | None = 0.5) -> CpuLoad:
        """Load the host of a tier's guest: `hogs` busy processes in its namespace that
        share cpu_limit CPUs (a cgroup quota) with the tier's server; None for no
        limit (the hogs then load the whole machine). Stopped on exit, or by release()."""
        if tier not in ("front", "app", "db", "img"):
            raise ValueError(f"no server tier {tier!r} (front, app, db or img)")
        prefix = getattr(self.tb, "prefix", str(os.getpid()))
        load = CpuLoad(self.tb, self.netns(tier), f"vnet-web-{prefix}-{tier}",
                       [self.procs[tier].pid], hogs=hogs, cpu_limit=cpu_limit)
        self.loads.append(load)
        load.start()
        return load

    def load_image_server(self, hogs: int = 1, cpu_limit: float | None = 0.5) -> CpuLoad:
        """The evaluation's "loaded image server" (see load_tier)."""
        return self.load_tier("img", hogs, cpu_limit)

    def dead(self) -> list[str]:
        """Tiers whose process has exited (empty while all run)."""
        return [t for t, p in self.procs.items() if p.poll() is not None]

    def _stop_all(self) -> None:
        for load in self.loads:
            with suppress(Exception):
                load.close()
        self.loads.clear()
        if "client" in self.procs:
            with suppress(Exception):
                self.stop_load()
        for tier in ("front", "img", "app"):
            proc = self.procs.pop(tier, None)
            if proc is not None:
                stop_process(proc, STOP_S)
        db = self.procs.pop("db", None)
        if db is not None:
            # Fast shutdown (SIGINT to the postmaster alone): it ends its own
            # children and frees its shared memory; the group's SIGKILL is a backstop.
            if db.poll() is None:
                os.kill(db.pid, signal.SIGINT)
                with suppress(subprocess.TimeoutExpired):
                    db.wait(STOP_S)
            stop_process(db, STOP_S)
