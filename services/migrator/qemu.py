"""The qemu backend: live migration of a QEMU VM between two hosts' forwarders.

A VM lives in the qemu directory's layout (`vmdir`); the source forwarder
holds it as a QEMU stream guest attached to its instance's netdev socket.
A move: start a destination QEMU (same config, `-incoming`, its own netdev
socket); have the destination forwarder attach to it on *standby* (not live
until a frame from the guest arrives); wait until it is connected, so QEMU's
announce after the switch cannot be lost; migrate over QMP with a small
downtime limit, publishing progress with the bytes sent. When QEMU resumes
the VM at the destination it sends RARPs from the guest's MAC: the
destination forwarder goes live on the first and re-announces the guest to
the proxy, so forwarding switches at once. Then the source forwarder lets
go and the source QEMU quits. `announce-self` is sent if no announce made
the destination live in time.

A failure before the destination is live rolls back: the migration is
cancelled, the destination QEMU ends and its forwarder lets go, and the
source VM (still attached and live at the source forwarder) runs on, `cont`
if QEMU left it paused. A migrator killed mid-move leaves both QEMUs alone;
`recover` finishes a migration that completed without it (rolling back
would rewind a guest that already ran at the destination) and rolls back
any other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.bus.pb import vnet_pb2 as pb
from services.migrator import vmdir
from services.migrator.model import Move, MoveControl, Outcome
from services.migrator.qmp import Qmp, QmpError, connect_quietly
from services.migrator.vmdir import Instance, VmDir, VmError

ACTIVE = {"setup", "active", "pre-switchover", "device", "wait-unplug", "cancelling"}
PAUSED = {"paused", "postmigrate", "finish-migrate", "prelaunch"}
NO_LIMIT_BYTES_S = 1 << 40  # QEMU's max-bandwidth is a byte rate; 1 TiB/s means none


@dataclass(frozen=True)
class QemuSettings:
    qemu_dir: Path  # the VMs' directories (vmdir's layout)
    downtime_limit_ms: int = 30  # QEMU switches over once the rest fits in this
    max_bandwidth_mib_s: float = 0.0  # migration rate cap; 0 = none
    start_timeout_s: float = 30.0  # a destination QEMU's sockets listening
    attach_timeout_s: float = 5.0  # the destination forwarder holding the guest
    connect_timeout_s: float = 5.0  # ... and connected to the destination's netdev
    migrate_timeout_s: float = 120.0  # the whole memory copy
    poll_s: float = 0.02  # query-migrate this often
    progress_every_s: float = 0.2  # publish progress at most this often
    announce_after_s: float = 0.5  # no live destination by then: QMP announce-self
    live_timeout_s: float = 3.0  # give up on the destination going live
    quit_timeout_s: float = 5.0  # a QEMU ending after quit/SIGTERM


@dataclass
class _Migration:
    """What QEMU said about a finished migration."""

    status: str
    info: dict[str, Any]

    @property
    def ram(self) -> dict[str, Any]:
        ram = self.info.get("ram", {})
        return ram if isinstance(ram, dict) else {}

    def ms(self, key: str) -> int:
        return int(self.info.get(key, 0) or 0)

    @property
    def transferred(self) -> int:
        return int(self.ram.get("transferred", 0) or 0)


class QemuBackend:
    name = "qemu"

    def __init__(self, settings: QemuSettings) -> None:
        self.s = settings

    # ------------------------------------------------------------ a move

    async def run(self, move: Move, ctl: MoveControl) -> Outcome:
        guest = move.guest
        if guest.kind != pb.ATTACHMENT_QEMU_STREAM:
            return Outcome(False, f"guest {move.guest_id} is not a QEMU stream guest"
                                  f" ({pb.AttachmentKind.Name(guest.kind)})")
        try:
            vm, src = self._locate(move)
        except VmError as exc:
            return Outcome(False, str(exc))
        src_qmp = await connect_quietly(str(src.qmp), self.s.connect_timeout_s)
        if src_qmp is None:
            return Outcome(False, f"source QEMU of {move.guest_id} ({src.dir}) does not answer"
                                  " on QMP; nothing changed")
        dst: Instance | None = None
        dst_qmp: Qmp | None = None
        try:
            status = await _run_state(src_qmp)
            if status != "running":
                return Outcome(False, f"source VM {move.guest_id} is {status!r}, not running;"
                                      " nothing changed")
            ctl.phase("prepare")
            dst = vm.new_instance()
            await vmdir.launch(vm, dst, incoming=True, timeout=self.s.start_timeout_s)
            dst_qmp = await Qmp.connect(str(dst.qmp), self.s.connect_timeout_s)
            ctl.progress(0.05, f"destination QEMU {dst.dir.name} for {move.guest_id} listening")
            dest_guest = _at(guest, dst, standby=True)
            if not await ctl.attach(move.to_host, dest_guest, self.s.attach_timeout_s):
                return await self._roll_back(move, ctl, src_qmp, dst, dst_qmp,
                                             f"destination {move.to_host} did not take the"
                                             f" guest within {self.s.attach_timeout_s:g}s")
            if not await _netdev_connected(dst_qmp, dst, self.s.connect_timeout_s):
                return await self._roll_back(move, ctl, src_qmp, dst, dst_qmp,
                                             f"the forwarder on {move.to_host} did not connect"
                                             f" to {dst.net} within"
                                             f" {self.s.connect_timeout_s:g}s")
            ctl.progress(0.1, f"{move.to_host} holds {move.guest_id} on standby; migrating")
            ctl.phase("migrate")
            mig = await self._migrate(src_qmp, dst, ctl)
            if mig.status != "completed":
                why = f"QEMU migration {mig.status}"
                if mig.info.get("error-desc"):
                    why += f": {mig.info['error-desc']}"
                return await self._roll_back(move, ctl, src_qmp, dst, dst_qmp, why,
                                             mig.transferred)
            completed_at = time.monotonic()
            ctl.phase("switch")
            live, announced = await self._await_live(move, ctl, dst_qmp)
            if not live:
                return await self._roll_back(
                    move, ctl, src_qmp, dst, dst_qmp,
                    f"destination {move.to_host} did not report {move.guest_id} live within"
                    f" {self.s.live_timeout_s:g}s of the switch (announce-self sent)",
                    mig.transferred)
            live_ms = (time.monotonic() - completed_at) * 1000
            ctl.progress(0.95, f"{move.guest_id} live on {move.to_host}; releasing the source",
                         bytes_moved=mig.transferred)
            ctl.phase("release")
            released = await ctl.detach(move.from_host, move.guest_id, self.s.attach_timeout_s)
            await _quit(src_qmp, src, self.s.quit_timeout_s)
            src_qmp = None
            detail = (f"qemu: total {mig.ms('total-time')} ms (setup {mig.ms('setup-time')} ms),"
                      f" downtime {mig.ms('downtime')} ms, {mig.transferred} bytes"
                      f" ({mig.ram.get('mbps', 0):.0f} Mbit/s),"
                      f" {mig.ram.get('dirty-sync-count', 0)} passes;"
                      f" vnet: {move.to_host} live {live_ms:.0f} ms after QEMU reported"
                      f" completion{' (after announce-self)' if announced else ''};"
                      f" instance {src.dir.name} -> {dst.dir.name}")
            if not released:
                detail += f"; {move.from_host} did not confirm the release"
            return Outcome(True, downtime_s=mig.ms("downtime") / 1000.0,
                           bytes_moved=mig.transferred, detail=detail)
        except (VmError, QmpError, OSError) as exc:
            return await self._roll_back(move, ctl, src_qmp, dst, dst_qmp, str(exc))
        finally:
            for conn in (src_qmp, dst_qmp):
                if conn is not None:
                    await conn.close()

    def _locate(self, move: Move) -> tuple[VmDir, Instance]:
        vm, inst = VmDir.of_attachment(self.s.qemu_dir, move.guest.attachment)
        if vm.config.id != move.guest_id:
            raise VmError(f"{vm.path} holds VM {vm.config.id!r}, not guest {move.guest_id!r}")
        if vm.config.mac.lower() != move.guest.mac.lower():
            raise VmError(f"VM {vm.config.id} has MAC {vm.config.mac}, the forwarder reports"
                          f" {move.guest.mac}")
        if inst.pid() is None:
            raise VmError(f"source QEMU of {move.guest_id} ({inst.dir}) is not running")
        return vm, inst

    async def _migrate(self, src_qmp: Qmp, dst: Instance, ctl: MoveControl) -> _Migration:
        """Run the migration to dst and poll it to its end (or cancel it at the deadline)."""
        bandwidth = int(self.s.max_bandwidth_mib_s * 2**20) or NO_LIMIT_BYTES_S
        await src_qmp.execute("migrate-set-parameters", {
            "downtime-limit": self.s.downtime_limit_ms, "max-bandwidth": bandwidth})
        await src_qmp.execute("migrate", {"uri": f"unix:{dst.incoming}"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.s.migrate_timeout_s
        next_progress = 0.0
        dst_gone_at: float | None = None
        while True:
            info = await src_qmp.execute("query-migrate")
            status = str(info.get("status", ""))
            if status not in ACTIVE:
                return _Migration(status or "none", info)
            now = loop.time()
            if dst_gone_at is None and dst.pid() is None:
                dst_gone_at = now  # the source notices when its next write fails
            if now > deadline or (dst_gone_at is not None and now - dst_gone_at > 2.0):
                await src_qmp.execute("migrate_cancel")
                why = ("destination QEMU ended" if dst_gone_at is not None
                       else f"not finished within {self.s.migrate_timeout_s:g}s")
                info = await self._settle(src_qmp)
                info.setdefault("error-desc", why)
                return _Migration("cancelled", info)
            if now >= next_progress:
                ram = info.get("ram", {})
                total = int(ram.get("total", 0) or 0)
                remaining = int(ram.get("remaining", 0) or 0)
                sent = int(ram.get("transferred", 0) or 0)
                done = 1.0 - remaining / total if total else 0.0
                ctl.progress(0.1 + 0.8 * max(0.0, min(1.0, done)),
                             f"{status}: {sent >> 20} MiB sent, {remaining >> 20} MiB left",
                             bytes_moved=sent)
                next_progress = now + self.s.progress_every_s
            await asyncio.sleep(self.s.poll_s)

    async def _settle(self, src_qmp: Qmp, timeout: float = 5.0) -> dict[str, Any]:
        """Wait for a cancelled migration to leave the active states."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            info: dict[str, Any] = await src_qmp.execute("query-migrate")
            if info.get("status") not in ACTIVE or loop.time() > deadline:
                return info
            await asyncio.sleep(self.s.poll_s)

    async def _await_live(self, move: Move, ctl: MoveControl,
                          dst_qmp: Qmp | None) -> tuple[bool, bool]:
        """(live, announce-self needed): QEMU's own announce normally suffices."""
        if await ctl.await_live(move.to_host, move.guest_id, self.s.announce_after_s):
            return True, False
        if dst_qmp is not None:
            with contextlib.suppress(QmpError):  # the wait below decides
                await dst_qmp.execute("announce-self", {
                    "initial": 50, "max": 550, "rounds": 5, "step": 100})
        left = max(0.0, self.s.live_timeout_s - self.s.announce_after_s)
        return await ctl.await_live(move.to_host, move.guest_id, left), True

    async def _roll_back(self, move: Move, ctl: MoveControl, src_qmp: Qmp | None,
                         dst: Instance | None, dst_qmp: Qmp | None, why: str,
                         bytes_moved: int = 0) -> Outcome:
        """Undo a move before the source was released: the VM runs on at the source."""
        if dst_qmp is not None:
            await dst_qmp.close()
        notes = await self._restore_source(move, ctl, src_qmp, [dst] if dst else [])
        return Outcome(False, f"{why}; {notes}", bytes_moved=bytes_moved)

    async def _restore_source(self, move: Move, ctl: MoveControl, src_qmp: Qmp | None,
                              dsts: list[Instance]) -> str:
        """Cancel, end the destination QEMUs, let the destination go, run the source."""
        notes: list[str] = []
        if src_qmp is not None and not src_qmp.closed:
            try:
                info = await src_qmp.execute("query-migrate")
                if info.get("status") in ACTIVE:
                    await src_qmp.execute("migrate_cancel")
                    await self._settle(src_qmp)
                    notes.append("migration cancelled")
            except QmpError as exc:
                notes.append(f"could not cancel the migration: {exc}")
        for dst in dsts:  # before the source may run again
            await vmdir.stop(dst, self.s.quit_timeout_s)
            notes.append(f"destination QEMU {dst.dir.name} stopped")
        if not await ctl.detach(move.to_host, move.guest_id, self.s.attach_timeout_s):
            notes.append(f"{move.to_host} did not confirm letting go of the guest")
        if src_qmp is not None and not src_qmp.closed:
            try:
                status = await _run_state(src_qmp)
                if status in PAUSED:
                    await src_qmp.execute("cont")
                    notes.append(f"source VM continued (was {status})")
                elif status != "running":
                    notes.append(f"source VM is {status!r}")
            except QmpError as exc:
                notes.append(f"could not check or continue the source VM: {exc}")
        else:
            notes.append("no QMP to the source VM")
        live = await ctl.await_live(move.from_host, move.guest_id, self.s.attach_timeout_s)
        if not live:
            # Released already (a crash after the release step): attach it back.
            live = (await ctl.attach(move.from_host, _at(move.guest, None, standby=False),
                                     self.s.attach_timeout_s)
                    and await ctl.await_live(move.from_host, move.guest_id,
                                             self.s.live_timeout_s))
        notes.append(f"{move.guest_id} live on {move.from_host}" if live
                     else f"{move.from_host} has not reported {move.guest_id} live")
        return "rolled back: " + ", ".join(notes)

    # ------------------------------------------------------------ after a crash

    async def recover(self, move: Move, phase: str, ctl: MoveControl) -> str:
        try:
            vm, src = VmDir.of_attachment(self.s.qemu_dir, move.guest.attachment)
        except VmError as exc:
            return f"cannot recover: {exc}"
        newer = [i for i in vm.instances() if i.number > src.number and i.pid() is not None]
        src_qmp = await connect_quietly(str(src.qmp)) if src.pid() is not None else None
        try:
            src_state = await _run_state(src_qmp) if src_qmp is not None else "gone"
            resumed: Instance | None = None
            for inst in reversed(newer):
                conn = await connect_quietly(str(inst.qmp))
                if conn is not None:
                    state = await _run_state(conn)
                    await conn.close()
                    if state == "running":
                        resumed = inst
                        break
            if resumed is not None and src_state in ("postmigrate", "gone"):
                note = await self._finish_forward(move, ctl, src, src_qmp, resumed, newer)
                src_qmp = None
                return note
            if src_qmp is None:
                return (f"cannot recover: the source QEMU of {move.guest_id} ({src.dir}) is"
                        f" gone and no newer instance runs")
            return await self._restore_source(move, ctl, src_qmp, newer)
        except QmpError as exc:
            return f"cannot recover: {exc}"
        finally:
            if src_qmp is not None:
                await src_qmp.close()

    async def _finish_forward(self, move: Move, ctl: MoveControl, src: Instance,
                              src_qmp: Qmp | None, dst: Instance, newer: list[Instance]) -> str:
        """The migration completed without us: the guest runs at dst; release the source."""
        for inst in newer:
            if inst != dst:
                await vmdir.stop(inst, self.s.quit_timeout_s)
        attached = await ctl.attach(move.to_host, _at(move.guest, dst, standby=True),
                                    self.s.attach_timeout_s)
        dst_qmp = await connect_quietly(str(dst.qmp))
        try:
            live, _ = await self._await_live(move, ctl, dst_qmp) if attached else (False, False)
        finally:
            if dst_qmp is not None:
                await dst_qmp.close()
        await ctl.detach(move.from_host, move.guest_id, self.s.attach_timeout_s)
        if src_qmp is not None:
            await _quit(src_qmp, src, self.s.quit_timeout_s)
        else:
            await vmdir.stop(src, self.s.quit_timeout_s)
        where = (f"live on {move.to_host}" if live
                 else f"running there, but {move.to_host} has not reported it live")
        return (f"the migration had completed without the migrator, so it was finished, not"
                f" undone (the guest already ran at the destination): {move.guest_id} is"
                f" {where} (instance {dst.dir.name}); source released")


def _at(guest: pb.Guest, inst: Instance | None, standby: bool) -> pb.Guest:
    """The guest record attached to inst's netdev (None: where it is now)."""
    g = pb.Guest()
    g.CopyFrom(guest)
    if inst is not None:
        g.attachment = inst.attachment
    g.standby = standby
    return g


async def _run_state(qmp: Qmp) -> str:
    return str((await qmp.execute("query-status")).get("status", "?"))


async def _netdev_connected(qmp: Qmp, inst: Instance, timeout: float) -> bool:
    """True once a client (the forwarder) is connected to inst's stream netdev."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        # `info network` lists the peer's address only while one is connected.
        if f"type=stream,unix:{inst.net}" in await qmp.hmp("info network"):
            return True
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)


async def _quit(qmp: Qmp, inst: Instance, timeout: float) -> None:
    pid = inst.pid()
    with contextlib.suppress(QmpError):  # QEMU may close the socket before it answers
        await qmp.execute("quit", timeout=timeout)
    await qmp.close()
    if pid is not None and not await vmdir.wait_exit(pid, timeout):
        await vmdir.stop(inst, timeout)
    inst.clean()


def backend_from_args(args: argparse.Namespace) -> QemuBackend:
    """`vnet migrator --backend qemu --qemu-dir DIR [...]`."""
    if not getattr(args, "qemu_dir", ""):
        raise ValueError("the qemu backend needs --qemu-dir (the VMs' directories)")
    qemu_dir = Path(args.qemu_dir)
    if not qemu_dir.is_dir():
        raise ValueError(f"--qemu-dir {qemu_dir}: no such directory")
    d = QemuSettings(qemu_dir)
    settings = QemuSettings(
        qemu_dir=qemu_dir,
        downtime_limit_ms=int(getattr(args, "qemu_downtime_ms", d.downtime_limit_ms)),
        max_bandwidth_mib_s=float(getattr(args, "qemu_max_bandwidth", d.max_bandwidth_mib_s)),
    )
    if settings.downtime_limit_ms < 1:
        raise ValueError("--qemu-downtime-ms must be at least 1")
    if settings.max_bandwidth_mib_s < 0:
        raise ValueError("--qemu-max-bandwidth must be 0 (no cap) or more")
    return QemuBackend(settings)
