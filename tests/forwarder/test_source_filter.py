"""A packet attachment on a shared segment sees only its own guest's frames (real BPF)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from services.forwarder.attach import PacketAttachment
from services.forwarder.config import GuestSpec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")
MAC_A, MAC_B = "02:aa:00:00:00:01", "02:bb:00:00:00:02"


def _setns(fd: int) -> None:
    """Enter a network namespace (this thread; os.setns arrives in Python 3.12)."""
    if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "setns failed")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def segment() -> Iterator[str]:
    """A bridge in its own namespace with two guests and a tap point ("seg")."""
    tag = f"sf{os.getpid() % 100000}"
    ns, ga, gb = f"{tag}-seg", f"{tag}-a", f"{tag}-b"
    try:
        for n in (ns, ga, gb):
            _ip("netns", "add", n)
        _ip("-n", ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", ns, "link", "set", "br0", "up")
        for name, guest, mac, addr in (("va", ga, MAC_A, "10.77.0.1/24"),
                                       ("vb", gb, MAC_B, "10.77.0.2/24")):
            _ip("-n", ns, "link", "add", name, "type", "veth", "peer", "name", "eth0",
                "netns", guest)
            _ip("-n", ns, "link", "set", name, "master", "br0", "up")
            _ip("-n", guest, "link", "set", "eth0", "address", mac, "up")
            _ip("-n", guest, "addr", "add", addr, "dev", "eth0")
        _ip("-n", ns, "link", "add", "seg", "type", "veth", "peer", "name", "segp")
        _ip("-n", ns, "link", "set", "segp", "master", "br0", "up")
        _ip("-n", ns, "link", "set", "seg", "up")
        yield ns
    finally:
        for n in (ns, ga, gb):
            subprocess.run(["ip", "netns", "del", n], capture_output=True, check=False)


def test_only_the_guests_own_frames_come_in(segment: str) -> None:
    got: list[bytes] = []
    tag = segment.removesuffix("-seg")
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{segment}", os.O_RDONLY)
    try:
        _setns(target)
        # As the forwarder opens a guest's socket once another guest shares "seg"
        # (the filter is in place before the socket is bound: nothing slips in).
        att = PacketAttachment(GuestSpec(id="a", mac=MAC_A, kind="packet", target="seg"),
                               got.extend, lambda c, d: None, source_only=True)
    finally:
        _setns(own)
        os.close(own)
        os.close(target)
    try:
        # Broadcast ARP from both guests floods the bridge, so "seg" sees both.
        for guest, peer in ((f"{tag}-a", "10.77.0.9"), (f"{tag}-b", "10.77.0.8")):
            subprocess.run(["ip", "netns", "exec", guest, "ping", "-c", "2", "-i", "0.2",
                            "-W", "1", peer], capture_output=True, check=False, timeout=20)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                got.append(att._read_one())
            except (TimeoutError, BlockingIOError):
                time.sleep(0.05)
    finally:
        att.close()
    sources = {bytes(f[16:22]).hex(":") for f in got}
    assert sources == {MAC_A}, sources
