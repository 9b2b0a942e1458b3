"""Start vnet's tiny test VM (`make vm`) with QEMU, attached by stream netdev.

QEMU is the server of the stream socket (Debian's QEMU 7.2 cannot reconnect
as a client); the forwarder connects to it and reconnects. KVM is used only
where it can boot a stock kernel: a /dev/kvm backed by PVM (no vmx/svm CPU
flag) hangs in the decompressor, so there QEMU runs under TCG.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VM_DIR = ROOT / "build" / "vm"
READY = b"vnet-vm: network up"


def vm_images(directory: Path = VM_DIR) -> tuple[Path, Path] | None:
    """The kernel and initramfs `make vm` built, or None when missing."""
    kernel, initrd = directory / "vmlinuz", directory / "initrd.img"
    return (kernel, initrd) if kernel.exists() and initrd.exists() else None


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64")


def accelerator(cpuinfo: Path = Path("/proc/cpuinfo"), kvm: Path = Path("/dev/kvm")) -> str:
    """"kvm" when hardware virtualisation is really there, else "tcg"."""
    if not kvm.exists() or not os.access(kvm, os.R_OK | os.W_OK):
        return "tcg"
    flags = set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return "kvm" if flags & {"vmx", "svm"} else "tcg"


@dataclass
class VmSpec:
    name: str
    mac: str
    ip_cidr: str  # e.g. "10.10.200.1/16"
    socket: Path  # the stream netdev's UNIX socket, QEMU listening
    mtu: int = 1400
    memory_mb: int = 128
    extra: list[str] = field(default_factory=list)

    def argv(self, kernel: Path, initrd: Path, accel: str | None = None) -> list[str]:
        binary = qemu_binary()
        if binary is None:
            raise FileNotFoundError("qemu-system-x86_64 not found: run `make vm`")
        return [
            binary, "-accel", accel or accelerator(), "-m", f"{self.memory_mb}M",
            "-name", self.name, "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", f"console=ttyS0 quiet vnet.ip={self.ip_cidr} vnet.mtu={self.mtu}",
            "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
            "-netdev",
            f"stream,id=n0,server=on,addr.type=unix,addr.path={self.socket}",
            "-device", f"virtio-net-pci,netdev=n0,mac={self.mac}",
            *self.extra,
        ]


def wait_ready(proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    """Read the VM's console until its network is up; raise with the tail if not."""
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([proc.stdout], [], [], left)[0]:
            break
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
        if READY in seen:
            return
    raise TimeoutError(
        f"VM did not bring its network up within {timeout:.0f}s; console tail:\n"
        + seen[-2000:].decode(errors="replace")
    )
