"""The whole system on an embedded testbed: broker, forwarders, inference, planner, migrator.

Used by `vnet demo`, `vnet up` and the evaluation, so they run the services the
same way. Every process is a real `vnet` sub-command: forwarders in their host
namespaces, the others in the root namespace on the broker's ipc:// endpoints
in the testbed's run directory (so `vnet tail --bus-sub ipc://...` works for an
operator). Everything is stopped on exit, even after errors. The testbed must
be built outside a running asyncio loop (pyroute2).
"""

from __future__ import annotations

import signal
import subprocess
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from services.bus.launch import Launcher, Process, stop_process
from services.bus.settings import BusSettings
from services.forwarder.launch import start_forwarder
from services.migrator.launch import start_migrator
from services.testbed.spec import TestbedSpec
from services.testbed.testbed import Testbed


@dataclass(frozen=True)
class StackSettings:
    """Knobs of the running system; the defaults suit a demo on 2 cores."""

    forwarder_args: tuple[str, ...] = ("--update-rate-hz", "5", "--state-interval-s", "1",
                                       "--keepalive-s", "0.5")
    inference_args: tuple[str, ...] = ("--update-rate-hz", "5", "--smoothing-window-s", "2",
                                       "--prune-fraction", "0.1", "--damping-s", "4",
                                       "--change-republish-s", "2")
    planner_args: tuple[str, ...] = ("--min-interval-s", "1", "--republish-s", "2",
                                     "--min-dwell-s", "20", "--no-return-s", "60")
    migrator_args: tuple[str, ...] = ()
    lan: bool = True  # the proxy bridges onto the user's LAN namespace


@dataclass
class Stack:
    spec: TestbedSpec
    logs: Path
    settings: StackSettings = field(default_factory=StackSettings)
    owner_cli: bool = False  # `vnet up`: `vnet down` may stop this process
    spec_source: str = ""
    tb: Testbed | None = None
    bus: BusSettings | None = None
    forwarders: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    services: dict[str, Process] = field(default_factory=dict)
    migrator: subprocess.Popen[bytes] | None = None
    _stack: ExitStack = field(default_factory=ExitStack)
    _launcher: Launcher | None = None

    def __enter__(self) -> Stack:
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
            self.tb = self._stack.enter_context(Testbed(
                self.spec, spec_source=self.spec_source, owner_cli=self.owner_cli))
            self._launcher = self._stack.enter_context(Launcher())
            with open(self.logs / "broker.log", "ab") as err:
                broker = self._launcher.start_broker_ipc(self.tb.run_dir, stderr=err.fileno())
            self.bus = BusSettings(pub=str(broker.info["pub"]), sub=str(broker.info["sub"]))
            self._stack.callback(self._stop_processes)
            for host in self.tb.hosts():
                self.forwarders[host] = start_forwarder(
                    self.tb, host, self.bus, log=self.logs / f"forwarder-{host}.log",
                    lan=self.settings.lan, extra=list(self.settings.forwarder_args))
            self._start("inference", list(self.settings.inference_args))
        except BaseException:
            self._stack.close()
            raise
        return self

    def _start(self, name: str, args: list[str]) -> None:
        assert self._launcher is not None and self.bus is not None
        with open(self.logs / f"{name}.log", "ab") as err:
            self.services[name] = self._launcher.start(
                name, [name, "--host", name, "--bus-pub", self.bus.pub, "--bus-sub",
                       self.bus.sub, *args], stderr=err.fileno())

    def start_adaptation(self) -> None:
        """Planner and migrator: from now on vnet adapts by itself."""
        assert self.tb is not None and self.bus is not None
        self.start_planner()
        self.migrator = start_migrator(
            self.tb, self.bus, log=self.logs / "migrator.log",
            journal=self.tb.run_dir / "migrator-journal",
            extra=list(self.settings.migrator_args))

    def start_planner(self, args: list[str] | None = None) -> None:
        """(Re)start the planner alone, with StackSettings' args unless given.

        The evaluation steps the planner's link budget on one running system;
        a planner already running is stopped first.
        """
        old = self.services.pop("planner", None)
        if old is not None:
            old.stop()
        self._start("planner", list(self.settings.planner_args if args is None else args))

    def _stop_processes(self) -> None:
        if self.migrator is not None:
            stop_process(self.migrator, 10)
        for proc in self.services.values():
            proc.stop()
        for fwd in self.forwarders.values():
            stop_process(fwd, 10)

    def alive(self) -> list[str]:
        """Names of the processes that died (empty while all run)."""
        dead = [f"forwarder@{h}" for h, p in self.forwarders.items() if p.poll() is not None]
        dead += [n for n, p in self.services.items() if p.popen.poll() is not None]
        if self.migrator is not None and self.migrator.poll() is not None:
            dead.append("migrator")
        return dead

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # A second Ctrl-C must not interrupt the teardown half-way.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self._stack.close()
        finally:
            signal.signal(signal.SIGINT, previous)
