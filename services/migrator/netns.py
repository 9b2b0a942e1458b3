"""The netns backend: a namespace guest's veth moves from one host namespace to another.

The guest keeps its namespace, processes, MAC, IP and TCP connections; only
the host end of its veth (the interface the forwarder reads with AF_PACKET)
changes namespace, in one netlink operation, so the interface is in exactly
one host at any instant. Steps: the destination forwarder holds the guest
waiting; (optionally) the guest's memory size is copied across the underlay;
the interface moves; the destination forwarder sees it arrive, brings it up,
attaches and re-announces the guest to the proxy; the source lets go. If the
destination does not go live in time, the interface moves back and the
source, which still holds the guest waiting, re-attaches it by itself.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

from services.bus.pb import vnet_pb2 as pb
from services.migrator.memcopy import copy_memory
from services.migrator.model import Move, MoveControl, MoveFailed, Outcome


@dataclass(frozen=True)
class NetnsHost:
    netns: str
    underlay_ip: str = ""

    @staticmethod
    def parse(text: str) -> tuple[str, NetnsHost]:
        """`HOST=NETNS[@UNDERLAY_IP]`, as `--netns-host` takes it."""
        name, sep, rest = text.partition("=")
        netns, _, ip = rest.partition("@")
        if not sep or not name or not netns:
            raise ValueError(f"--netns-host {text!r}: use HOST=NETNS[@UNDERLAY_IP]")
        return name, NetnsHost(netns, ip)


@dataclass(frozen=True)
class NetnsSettings:
    hosts: dict[str, NetnsHost]
    memory_bytes: int = 0  # charge each move this much copying across the underlay
    copy_port: int = 7400  # first TCP port for memory copies (one per concurrent move)
    copy_channels: int = 2  # TCP connections per copy, as QEMU's multifd default
    attach_timeout_s: float = 5.0
    live_timeout_s: float = 5.0


async def _ip(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    return proc.returncode or 0, err.decode(errors="replace").strip()


class NetnsBackend:
    name = "netns"

    def __init__(self, settings: NetnsSettings) -> None:
        self.s = settings
        self._ports = itertools.cycle(range(settings.copy_port, settings.copy_port + 64))

    def _host(self, host: str) -> NetnsHost:
        ns = self.s.hosts.get(host)
        if ns is None:
            raise MoveFailed(f"host {host!r} has no namespace configured (--netns-host)")
        return ns

    async def _where(self, iface: str, *hosts: NetnsHost) -> NetnsHost | None:
        for h in hosts:
            code, _ = await _ip("-n", h.netns, "link", "show", "dev", iface)
            if code == 0:
                return h
        return None

    async def _move_iface(self, iface: str, src: NetnsHost, dst: NetnsHost) -> None:
        code, err = await _ip("-n", src.netns, "link", "set", "dev", iface, "netns", dst.netns)
        if code != 0:
            raise MoveFailed(f"moving {iface} from {src.netns} to {dst.netns} failed: {err}")
        # It arrives down; the destination forwarder sees it arrive and brings it up.

    async def run(self, move: Move, ctl: MoveControl) -> Outcome:
        guest = move.guest
        if guest.kind != pb.ATTACHMENT_PACKET or not guest.attachment:
            return Outcome(False, f"guest {move.guest_id} is not a namespace guest on a veth"
                                  f" ({pb.AttachmentKind.Name(guest.kind)})")
        iface = guest.attachment
        try:
            src, dst = self._host(move.from_host), self._host(move.to_host)
        except MoveFailed as exc:
            return Outcome(False, str(exc))
        moved = 0
        ctl.phase("prepare")
        if not await ctl.attach(move.to_host, guest, self.s.attach_timeout_s):
            await ctl.detach(move.to_host, move.guest_id, self.s.attach_timeout_s)
            return Outcome(False, f"destination {move.to_host} did not take the guest within"
                                  f" {self.s.attach_timeout_s:g}s; nothing moved")
        ctl.progress(0.1, f"destination {move.to_host} holds {move.guest_id}, waiting")
        if self.s.memory_bytes:
            if not (src.underlay_ip and dst.underlay_ip):
                return await self._abort(move, ctl, "memory copy needs underlay addresses")
            total = self.s.memory_bytes

            def on_progress(n: int) -> None:
                ctl.progress(0.1 + 0.8 * n / total, f"memory {n >> 20}/{total >> 20} MiB",
                             bytes_moved=n)
            try:
                moved = await copy_memory(src.netns, dst.netns, dst.underlay_ip,
                                          next(self._ports), total, on_progress,
                                          channels=self.s.copy_channels)
            except (OSError, TimeoutError) as exc:
                return await self._abort(move, ctl, f"memory copy failed: {exc}")
        ctl.phase("switch")
        t0 = time.monotonic()
        try:
            await self._move_iface(iface, src, dst)
        except MoveFailed as exc:
            return await self._abort(move, ctl, str(exc))
        if not await ctl.await_live(move.to_host, move.guest_id, self.s.live_timeout_s):
            note = await self._roll_back(move, ctl, src, dst)
            return Outcome(False, f"destination {move.to_host} did not bring {move.guest_id}"
                                  f" live within {self.s.live_timeout_s:g}s; {note}",
                           bytes_moved=moved)
        downtime = time.monotonic() - t0
        ctl.progress(0.95, f"{move.guest_id} live on {move.to_host}; releasing the source")
        ctl.phase("release")
        if not await ctl.detach(move.from_host, move.guest_id, self.s.attach_timeout_s):
            # The guest runs at the destination; the source merely keeps a waiting entry.
            ctl.progress(0.99, f"source {move.from_host} did not confirm the release")
        return Outcome(True, downtime_s=downtime, bytes_moved=moved)

    async def _abort(self, move: Move, ctl: MoveControl, why: str) -> Outcome:
        """Failed before the switch: the guest never left; drop the destination's entry."""
        await ctl.detach(move.to_host, move.guest_id, self.s.attach_timeout_s)
        return Outcome(False, f"{why}; rolled back, {move.guest_id} stays on {move.from_host}")

    async def _roll_back(self, move: Move, ctl: MoveControl, src: NetnsHost,
                         dst: NetnsHost) -> str:
        iface = move.guest.attachment
        where = await self._where(iface, src, dst)
        if where == dst:
            try:
                await self._move_iface(iface, dst, src)
            except MoveFailed as exc:
                return f"rollback failed: {exc}"
        elif where is None:
            return f"rollback impossible: {iface} is in neither host namespace"
        live = await ctl.await_live(move.from_host, move.guest_id, self.s.live_timeout_s)
        await ctl.detach(move.to_host, move.guest_id, self.s.attach_timeout_s)
        return (f"rolled back, {move.guest_id} live on {move.from_host} again" if live
                else f"rolled back to {move.from_host}, which has not reported it live")

    async def recover(self, move: Move, phase: str, ctl: MoveControl) -> str:
        try:
            src, dst = self._host(move.from_host), self._host(move.to_host)
        except MoveFailed as exc:
            return f"cannot recover: {exc}"
        return await self._roll_back(move, ctl, src, dst)
