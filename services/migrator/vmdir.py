"""QEMU VMs on disk: one directory per VM, one numbered instance per QEMU process.

The qemu backend finds and owns VMs through this layout (`--qemu-dir DIR`):

    DIR/<vm>/vm.json        how to start it (VmConfig): MAC, IP, memory, kernel, ...
    DIR/<vm>/<n>/           instance n: one QEMU process (n grows with each move)
        qmp.sock            QMP, QEMU listening
        net.sock            the stream netdev, QEMU listening; the forwarder connects
        incoming.sock       where a migration destination listens
        qemu.pid  qemu.err  console.log

A guest's attachment (`unix:DIR/<vm>/<n>/net.sock`) names its instance, so
the forwarder's state says which QEMU process is the guest. QEMU runs with
-daemonize: its parent exits once the sockets are listening, and the VM
outlives whoever started it (a migrator killed mid-move leaves the VMs to
its successor). Processes are identified by pid file *and* command line, so
a recycled pid is never killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from services.testbed import qemu as testbed_qemu

CONFIG = "vm.json"
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL


class VmError(Exception):
    """A VM directory, config or process is not as expected."""


@dataclass(frozen=True)
class VmConfig:
    """Everything both ends of a migration must start identically."""

    id: str
    mac: str
    ip_cidr: str  # e.g. "10.10.200.1/16" (the tiny VM's init reads it from the command line)
    memory_mb: int = 128
    mtu: int = 1400
    kernel: str = str(testbed_qemu.VM_DIR / "vmlinuz")
    initrd: str = str(testbed_qemu.VM_DIR / "initrd.img")
    accel: str = ""  # "kvm" or "tcg"; fixed when the VM is created (both ends must match)
    extra: list[str] = field(default_factory=list)  # more QEMU arguments, on both ends

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VmConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise VmError(f"{CONFIG}: unknown keys {', '.join(unknown)}"
                          f" (known: {', '.join(sorted(known))})")
        try:
            return cls(**data)
        except TypeError as exc:
            raise VmError(f"{CONFIG}: {exc}") from exc

    @property
    def ip(self) -> str:
        return self.ip_cidr.partition("/")[0]


@dataclass(frozen=True)
class Instance:
    """One QEMU process of a VM and its files."""

    dir: Path

    @property
    def number(self) -> int:
        return int(self.dir.name)

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def net(self) -> Path:
        return self.dir / "net.sock"

    @property
    def incoming(self) -> Path:
        return self.dir / "incoming.sock"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    @property
    def errors(self) -> Path:
        return self.dir / "qemu.err"

    @property
    def attachment(self) -> str:
        """The forwarder's name for this instance's netdev (`--guest ...,qemu=` value)."""
        return f"unix:{self.net}"

    def pid(self) -> int | None:
        """The QEMU process of this instance, if it runs (checked by command line)."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(self.qmp).encode() in cmdline else None

    def error_text(self) -> str:
        try:
            return self.errors.read_text(errors="replace").strip()[-1000:]
        except OSError:
            return ""

    def clean(self) -> None:
        """Remove the sockets and pid file of a stopped instance (logs stay)."""
        for path in (self.qmp, self.net, self.incoming, self.pidfile):
            path.unlink(missing_ok=True)


class VmDir:
    """A VM's directory: its config and its instances."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            data = json.loads((path / CONFIG).read_text())
        except (OSError, ValueError) as exc:
            raise VmError(f"{path / CONFIG}: cannot read the VM's config: {exc}") from exc
        if not isinstance(data, dict):
            raise VmError(f"{path / CONFIG}: not a JSON object")
        self.config = VmConfig.from_dict(data)

    @classmethod
    def create(cls, qemu_dir: Path, config: VmConfig) -> VmDir:
        """Write a new VM's directory (its accelerator fixed now)."""
        if not config.accel:
            config = VmConfig(**{**asdict(config), "accel": testbed_qemu.accelerator()})
        path = qemu_dir / config.id
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / (CONFIG + ".tmp")
        tmp.write_text(json.dumps(asdict(config), indent=1) + "\n")
        tmp.replace(path / CONFIG)
        return cls(path)

    @classmethod
    def of_attachment(cls, qemu_dir: Path, attachment: str) -> tuple[VmDir, Instance]:
        """The VM and instance a guest's attachment names, checked to lie in qemu_dir."""
        if not attachment.startswith("unix:"):
            raise VmError(f"attachment {attachment!r} is not a unix: socket in {qemu_dir}")
        sock = Path(attachment[5:])
        inst_dir = sock.parent
        vm_path = inst_dir.parent
        if (sock.name != "net.sock" or not inst_dir.name.isdigit()
                or vm_path.parent.resolve() != qemu_dir.resolve()):
            raise VmError(f"attachment {attachment!r} is not DIR/<vm>/<n>/net.sock"
                          f" in the qemu directory {qemu_dir}")
        return cls(vm_path), Instance(inst_dir)

    def instances(self) -> list[Instance]:
        return sorted((Instance(p) for p in self.path.iterdir()
                       if p.is_dir() and p.name.isdigit()), key=lambda i: i.number)

    def new_instance(self) -> Instance:
        """A fresh instance directory, numbered after every existing one."""
        n = max((i.number for i in self.instances()), default=-1) + 1
        inst = Instance(self.path / str(n))
        inst.dir.mkdir()
        longest = max((inst.qmp, inst.net, inst.incoming), key=lambda p: len(str(p)))
        if len(str(longest)) > SOCKET_PATH_MAX:
            raise VmError(f"socket path {longest} is longer than {SOCKET_PATH_MAX} bytes:"
                          " use a shorter --qemu-dir")
        return inst

    def argv(self, inst: Instance, incoming: bool = False) -> list[str]:
        """The QEMU command line of an instance; identical hardware on every instance."""
        c = self.config
        binary = testbed_qemu.qemu_binary()
        if binary is None:
            raise VmError("qemu-system-x86_64 not found (Debian: qemu-system-x86; `make vm`)")
        accel = c.accel or testbed_qemu.accelerator()
        argv = [
            binary, "-accel", accel, "-m", memory_arg(c.memory_mb, accel),
            "-name", c.id, "-kernel", c.kernel, "-initrd", c.initrd,
            "-append", f"console=ttyS0 quiet vnet.ip={c.ip_cidr} vnet.mtu={c.mtu}",
            "-display", "none", "-monitor", "none", "-no-reboot",
            "-serial", f"file:{inst.console}",
            "-qmp", f"unix:{inst.qmp},server=on,wait=off",
            "-netdev", f"stream,id=n0,server=on,addr.type=unix,addr.path={inst.net}",
            "-device", f"virtio-net-pci,netdev=n0,mac={c.mac}",
            "-daemonize", "-pidfile", str(inst.pidfile),
            *c.extra,
        ]
        if incoming:
            argv += ["-incoming", f"unix:{inst.incoming}"]
        return argv


def memory_arg(memory_mb: int, accel: str) -> str:
    """QEMU's -m for a guest of memory_mb, with 8 KiB more under TCG.

    QEMU 7.2 (Debian 12) loses guest writes in a TCG live migration now and
    then: its fast dirty-bitmap sync, taken when a RAM block is a multiple of
    256 KiB, clears the migration dirty bits without resetting TCG's TLB, so
    pages the vCPU writes afterwards are never resent and the destination
    runs with stale ones (seen here as a dead virtio-net: "output.0:id N is
    not a head!", about one move in 25 under a ping flood; a byte comparison
    of both ends' RAM showed the lost pages). QEMU 9.0 fixed it. A block of
    128 MiB + 8 KiB takes the slow path, which resets the TLB.
    """
    if accel == "tcg":
        return f"{memory_mb * 1024 + 8}K"
    return f"{memory_mb}M"


# ---------------------------------------------------------------- processes


async def wait_exit(pid: int, timeout: float) -> bool:
    """True once process pid has ended (a pidfd on the loop: no thread, no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(fd, on_exit)
    try:
        await asyncio.wait_for(ended, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def launch(vm: VmDir, inst: Instance, incoming: bool, timeout: float = 30.0) -> int:
    """Start an instance's QEMU and return its pid once its sockets listen."""
    argv = vm.argv(inst, incoming)
    with open(inst.errors, "wb") as err:
        # Popen's fork+exec takes a millisecond; asyncio's subprocess would add a
        # watcher thread per child on 3.11.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
    try:
        exited = await wait_exit(proc.pid, timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    pid = inst.pid()
    if not exited or proc.returncode != 0 or pid is None:
        await stop(inst)  # a daemon half started
        raise VmError(f"QEMU for {vm.config.id} instance {inst.number} did not start"
                      f" (exit {proc.returncode}): {inst.error_text() or 'no message'}")
    return pid


async def stop(inst: Instance, timeout: float = 5.0) -> None:
    """End an instance's QEMU (SIGTERM, then SIGKILL) and remove its sockets."""
    pid = inst.pid()
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not await wait_exit(pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await wait_exit(pid, timeout)
    inst.clean()


# ---------------------------------------------------------------- for tests and the demo


def start_vm(qemu_dir: Path, config: VmConfig, timeout: float = 30.0) -> tuple[VmDir, Instance]:
    """Create a VM's directory and boot its first instance (not waiting for the guest)."""
    vm = VmDir.create(qemu_dir, config)
    inst = vm.new_instance()
    with open(inst.errors, "wb") as err:
        done = subprocess.run(vm.argv(inst), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=err, timeout=timeout,
                              check=False)
    if done.returncode != 0 or inst.pid() is None:
        raise VmError(f"QEMU for {config.id} did not start (exit {done.returncode}):"
                      f" {inst.error_text() or 'no message'}")
    return vm, inst


def wait_booted(inst: Instance, timeout: float = 120.0) -> None:
    """Wait for the tiny VM's "network up" line on the instance's console."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if testbed_qemu.READY in inst.console.read_bytes():
                return
        if inst.pid() is None:
            break
        time.sleep(0.1)
    tail = inst.console.read_bytes()[-2000:].decode(errors="replace") \
        if inst.console.exists() else ""
    raise TimeoutError(f"VM instance {inst.dir} did not bring its network up within"
                       f" {timeout:.0f}s; console tail:\n{tail}")


def stop_all(qemu_dir: Path, timeout: float = 5.0) -> list[int]:
    """Kill every QEMU process of every VM under qemu_dir (by pid file); the pids killed."""
    killed: list[int] = []
    if not qemu_dir.is_dir():
        return killed
    for vm_path in sorted(p for p in qemu_dir.iterdir() if p.is_dir()):
        for inst_dir in sorted(p for p in vm_path.iterdir() if p.is_dir() and p.name.isdigit()):
            inst = Instance(inst_dir)
            pid = inst.pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            inst.clean()
    deadline = time.monotonic() + timeout
    while killed and time.monotonic() < deadline and any(
            Path(f"/proc/{p}").exists() and _not_zombie(p) for p in killed):
        time.sleep(0.02)
    return killed


def _not_zombie(pid: int) -> bool:
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:4]
    except (OSError, IndexError):
        return False
