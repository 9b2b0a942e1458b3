"""A real QEMU VM joins vnet through the stream netdev, unmodified.

The VM (`make vm`: Debian's cloud kernel and a busybox initramfs) runs
under TCG here; QEMU is the stream server and the forwarder on h1 connects
to its UNIX socket. Guests on another host and on the same host ping it.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from services.bus.launch import stop_process
from services.forwarder.launch import start_forwarder
from services.testbed import qemu
from services.testbed.spec import TestbedSpec
from services.testbed.testbed import Testbed

pytestmark = pytest.mark.netns

PORT = 7100
VM_MAC = "02:76:6e:00:c8:01"
VM_IP = "10.10.200.1"
SPEC = {
    "site": [{"name": "a"}],
    "host": [{"name": "proxy", "site": "a", "proxy": True}, {"name": "h1", "site": "a"}],
    "guest": [{"name": "g1", "host": "proxy"}, {"name": "g2", "host": "h1"}],
}


@dataclass
class VmNet:
    tb: Testbed
    vm: subprocess.Popen[bytes]

    def ping(self, guest: str, count: int = 3) -> subprocess.CompletedProcess[str]:
        g = self.tb.guest(guest)
        return self.tb.run(g.netns, ["ping", "-c", str(count), "-i", "0.2", "-W", "2", VM_IP],
                           check=False)


@pytest.fixture(scope="module")
def vmnet() -> Iterator[VmNet]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    images = qemu.vm_images()
    if images is None or qemu.qemu_binary() is None:
        pytest.skip("no test VM: `make vm` builds it (qemu-system-x86, kernel, initramfs)")
    kernel, initrd = images
    with Testbed(TestbedSpec.from_dict(SPEC, name="qemu")) as tb:
        sock = tb.run_dir / "vm1.sock"
        spec = qemu.VmSpec("vm1", VM_MAC, f"{VM_IP}/16", sock)
        vm = tb.popen(tb.host_netns("h1"), spec.argv(kernel, initrd), stdout=subprocess.PIPE,
                      stderr=subprocess.STDOUT)
        procs = [vm]
        try:
            qemu.wait_ready(vm)
            for host in ("proxy", "h1"):
                extra = ["--guest", f"id=vm1,mac={VM_MAC},ip={VM_IP},qemu=unix:{sock}"] \
                    if host == "h1" else []
                procs.append(start_forwarder(tb, host, None, log=tb.run_dir / f"{host}.log",
                                             port=PORT, extra=extra))
            yield VmNet(tb, vm)
        finally:
            for proc in reversed(procs):
                stop_process(proc, 10)


def test_accelerator_falls_back_to_tcg_without_vmx_or_svm(tmp_path: object) -> None:
    from pathlib import Path

    base = Path(str(tmp_path))
    cpu = base / "cpuinfo"
    kvm = base / "kvm"
    kvm.write_text("")
    cpu.write_text("processor: 0\nflags\t\t: fpu sse2 avx2\n")
    assert qemu.accelerator(cpu, kvm) == "tcg"  # PVM: /dev/kvm but no vmx/svm
    cpu.write_text("processor: 0\nflags\t\t: fpu vmx sse2\n")
    assert qemu.accelerator(cpu, kvm) == "kvm"
    assert qemu.accelerator(cpu, base / "missing") == "tcg"


def _wait_ping(net: VmNet, guest: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + timeout
    while True:
        result = net.ping(guest)
        if result.returncode == 0 or time.monotonic() > deadline:
            return result


def test_guest_on_another_host_pings_the_vm_through_the_star(vmnet: VmNet) -> None:
    result = _wait_ping(vmnet, "g1")
    assert result.returncode == 0, result.stdout
    warm = vmnet.ping("g1", count=5)  # once the path is warm, nothing is lost
    assert " 0% packet loss" in warm.stdout, warm.stdout


def test_guest_on_the_same_host_pings_the_vm(vmnet: VmNet) -> None:
    result = _wait_ping(vmnet, "g2")
    assert result.returncode == 0, result.stdout

