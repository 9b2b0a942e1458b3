"""A compose project of the vnet testbed, run for a test: up, health, exec, logs, down.

Every docker object is found through the project's label, never by name, so a
user's own `make compose-up` stack (project "vnet") is left alone.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
LABEL = "com.docker.compose.project"


def _run(argv: list[str], timeout: float = 60.0, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=cwd, env=env)


def docker_unavailable() -> str | None:
    """Why the compose tests cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker command"
    try:
        if _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=20).returncode:
            return "no docker engine answers (docker info failed)"
    except subprocess.TimeoutExpired:
        return "no docker engine answers (docker info timed out)"
    if compose_command() is None:
        return "neither `docker compose` nor docker-compose is installed"
    return None


def compose_command() -> list[str] | None:
    if shutil.which("docker") and _run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


class Stack:
    """One compose project with its own name and subnets (VNET_NET)."""

    def __init__(self, image: str, net: str, extra_env: dict[str, str] | None = None) -> None:
        self.project = "vnettest" + secrets.token_hex(3)
        self.compose = compose_command() or ["docker-compose"]
        self.net = net
        self.env = {**os.environ, "VNET_IMAGE": image, "VNET_NET": net,
                    "VNET_WORKLOAD": "none", **(extra_env or {})}
        self.healthy_after_s: float | None = None

    # ------------------------------------------------------------ compose

    def compose_run(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        argv = [*self.compose, "-p", self.project, "-f", str(COMPOSE_DIR / "docker-compose.yml"),
                *args]
        return _run(argv, timeout=timeout, cwd=COMPOSE_DIR, env=self.env)

    def up(self) -> None:
        started = time.monotonic()
        done = self.compose_run("up", "-d", "--no-build")
        if done.returncode:
            raise AssertionError(f"compose up failed:\n{done.stdout}\n{done.stderr}\n"
                                 + self.logs())
        self.wait_healthy(timeout_s=300.0)
        self.healthy_after_s = time.monotonic() - started

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.compose_run("down", "--volumes", "--remove-orphans", "--timeout", "5")

    # ------------------------------------------------------------ containers

    def containers(self) -> dict[str, str]:
        """service name -> container id (one-off `run` containers excluded)."""
        out = _run(["docker", "ps", "-a", "--filter", f"label={LABEL}={self.project}",
                    "--filter", "label=com.docker.compose.oneoff=False",
                    "--format", '{{.ID}} {{.Label "com.docker.compose.service"}}']).stdout
        return {svc: cid for cid, svc in (line.split() for line in out.splitlines() if line)}

    def container(self, service: str) -> str:
        cid = self.containers().get(service)
        if cid is None:
            raise AssertionError(f"no container for service {service!r} in {self.project}")
        return cid

    def health(self) -> dict[str, str]:
        """service -> 'healthy', 'starting', 'unhealthy', 'running' (no check) or the state."""
        ids = self.containers()
        if not ids:
            return {}
        fmt = ('{{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}} '
               "{{if .State.Health}}{{.State.Health.Status}}{{end}}")
        out = _run(["docker", "inspect", "--format", fmt, *ids.values()]).stdout
        states: dict[str, str] = {}
        for line in out.splitlines():
            parts = line.split()
            if parts:
                svc, status = parts[0], parts[1]
                states[svc] = parts[2] if status == "running" and len(parts) > 2 else status
        return states

    def wait_healthy(self, services: list[str] | None = None, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            states = self.health()
            wanted = {s: v for s, v in states.items() if services is None or s in services}
            bad = {s: v for s, v in wanted.items() if v not in ("healthy", "running")}
            if wanted and not bad:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not healthy after {timeout_s:.0f} s: {bad or states}\n"
                                     + self.health_output(list(bad)) + self.logs(list(bad)))
            time.sleep(1.0)

    def health_output(self, services: list[str]) -> str:
        out = []
        for svc in services:
            cid = self.containers().get(svc)
            if cid:
                fmt = "{{if .State.Health}}{{range .State.Health.Log}}{{.Output}}{{end}}{{end}}"
                checks = _run(["docker", "inspect", "--format", fmt, cid]).stdout[-1500:]
                out.append(f"--- {svc} health checks:\n{checks}")
        return "\n".join(out) + "\n"

    def exec(self, service: str, argv: list[str], timeout: float = 60.0
             ) -> subprocess.CompletedProcess[str]:
        return _run(["docker", "exec", self.container(service), *argv], timeout=timeout)

    def exec_detached(self, service: str, argv: list[str]) -> None:
        done = _run(["docker", "exec", "-d", self.container(service), *argv])
        assert done.returncode == 0, done.stderr

    def popen(self, service: str, argv: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(["docker", "exec", self.container(service), *argv],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stop(self, service: str) -> None:
        done = _run(["docker", "stop", "--time", "5", self.container(service)])
        assert done.returncode == 0, done.stderr

    def start(self, service: str) -> None:
        done = _run(["docker", "start", self.container(service)])
        assert done.returncode == 0, done.stderr

    def guest_ip(self, n: int) -> str:
        return f"{self.net}.100.{n}"

    # ------------------------------------------------------------ diagnostics

    def logs(self, services: list[str] | None = None, tail: int = 40) -> str:
        """The last log lines of each service (all when None), for failure reports."""
        chunks = []
        for svc, cid in sorted(self.containers().items()):
            if services is not None and svc not in services:
                continue
            done = _run(["docker", "logs", "--tail", str(tail), cid])
            chunks.append(f"--- {svc} (last {tail} lines)\n{done.stdout}{done.stderr}")
        return "\n".join(chunks)

    def leftovers(self) -> list[str]:
        """Containers, networks and volumes of this project still present."""
        left = []
        for kind, cmd in (("container", ["ps", "-a"]), ("network", ["network", "ls"]),
                          ("volume", ["volume", "ls"])):
            out = _run(["docker", *cmd, "-q", "--filter", f"label={LABEL}={self.project}"]).stdout
            left += [f"{kind} {x}" for x in out.split()]
        return left


def bus_messages(lines: str) -> list[dict[str, Any]]:
    """`vnet tail --json` output as dicts (other lines skipped)."""
    out = []
    for line in lines.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
