"""Start vnet processes and stop exactly those: for the demo, tests, benches.

Each child runs in its own process group so a stop reaches its children
too, and nothing is found or killed by name.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

VNET = [sys.executable, "-m", "services.cli.main"]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    info: dict[str, object] = field(default_factory=dict)

    def stop(self, timeout: float = 5.0) -> int:
        return stop_process(self.popen, timeout)


def stop_process(popen: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    """SIGTERM the process group popen leads, SIGKILL it after timeout; close its pipes.

    For processes started with start_new_session (as Launcher and the
    testbed's popen do), so children go too.
    """
    if popen.poll() is None:
        os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
    for stream in (popen.stdin, popen.stdout, popen.stderr):
        if stream is not None:
            stream.close()
    return popen.returncode


class Launcher:
    """Owns the processes it starts; stops them all on exit, even on error."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = {**os.environ, **(env or {})}
        self.processes: list[Process] = []

    def start(
        self, name: str, args: list[str], stdout: int | None = subprocess.DEVNULL,
        stderr: int | None = None,
    ) -> Process:
        popen = subprocess.Popen(
            VNET + args, env=self.env, stdout=stdout, stderr=stderr, start_new_session=True
        )
        proc = Process(name, popen)
        self.processes.append(proc)
        return proc

    def start_broker(
        self, args: list[str] | None = None, timeout: float = 15.0, stderr: int | None = None
    ) -> Process:
        """Start `vnet broker` (random ports unless given) and read its ready line."""
        extra = args or []
        if "--bus-pub" not in extra:
            extra += ["--bus-pub", "tcp://127.0.0.1:*"]
        if "--bus-sub" not in extra:
            extra += ["--bus-sub", "tcp://127.0.0.1:*"]
        proc = self.start("broker", ["broker", *extra], stdout=subprocess.PIPE, stderr=stderr)
        assert proc.popen.stdout is not None
        ready, _, _ = select.select([proc.popen.stdout], [], [], timeout)
        line = proc.popen.stdout.readline() if ready else b""
        if not line:
            code = proc.popen.poll()
            raise RuntimeError(f"broker did not become ready in {timeout}s (exit code {code})")
        proc.info = json.loads(line)
        return proc

    def start_broker_ipc(self, directory: Path, stderr: int | None = None) -> Process:
        """A broker on ipc:// sockets in directory: reachable from every network
        namespace on this machine (they share the filesystem)."""
        return self.start_broker(
            ["--bus-pub", f"ipc://{directory}/bus-pub", "--bus-sub", f"ipc://{directory}/bus-sub"],
            stderr=stderr,
        )

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()

    def __enter__(self) -> Launcher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
