"""A real QEMU VM live-migrates between two hosts' forwarders while a guest pings it.

The lab (services.migrator.qemulab): proxy + h1 + h2 namespaces, a broker,
forwarders, the tiny VM vm1 (`make vm`, TCG here) attached to h1, and g1 on
the proxy host pinging vm1 every 5 ms. `vnet migrator --backend qemu` moves
it on `vnet migrate`; the figures (QEMU's downtime, total, bytes, the ping
gap) are printed, not asserted: speed belongs to the bench.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.bus.launch import Process
from services.migrator import qemulab
from services.migrator.qemulab import PingFlood, QemuLab

pytestmark = [pytest.mark.netns, pytest.mark.slow]

DONE = "MIGRATION_PHASE_DONE"
FAILED = "MIGRATION_PHASE_FAILED"
PROGRESS = "MIGRATION_PHASE_PROGRESS"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QemuLab]:
    reason = qemulab.unavailable()
    if reason is not None:
        pytest.skip(reason)
    with qemulab.qemu_lab(Path(tmp_path_factory.mktemp("qemu-migration"))) as lab:
        yield lab


@pytest.fixture
def migrators(lab: QemuLab) -> Iterator[list[Process]]:
    """Migrator processes a test starts; stopped when it ends."""
    procs: list[Process] = []
    yield procs
    for proc in procs:
        proc.stop()


def _flood(lab: QemuLab, name: str) -> PingFlood:
    flood = lab.ping_flood(name)
    _wait_replies(flood, 20)
    return flood


def _wait_replies(flood: PingFlood, more: int, timeout: float = 10.0) -> None:
    """Wait until the flood has logged `more` replies beyond what it had."""
    def replies() -> int:
        return flood.log.read_bytes().count(b" bytes from ")

    target = replies() + more
    deadline = time.monotonic() + timeout
    while replies() < target:
        if time.monotonic() > deadline:
            raise AssertionError(f"{flood.log.name}: no {more} more replies in {timeout:g}s")
        time.sleep(0.05)


def _outcome(statuses: list[dict[str, Any]]) -> dict[str, Any]:
    assert statuses, "vnet migrate printed nothing"
    return statuses[-1]


def test_vm_keeps_answering_across_a_live_migration(lab: QemuLab,
                                                    migrators: list[Process]) -> None:
    migrators.append(lab.start_migrator())
    src, dst = lab.location, lab.other_host()
    before = lab.running_instances()
    assert len(before) == 1
    flood = _flood(lab, "live")
    try:
        statuses = lab.migrate(dst)
        done = _outcome(statuses)
        assert done["phase"] == DONE, done
        lab.location = dst
        _wait_replies(flood, 40)  # it answers at the destination
    finally:
        stats = flood.stop()
    assert statuses[0]["phase"] == "MIGRATION_PHASE_STARTED", statuses[0]
    progress = [s for s in statuses if s["phase"] == PROGRESS and int(s.get("bytesMoved", 0))]
    assert progress, "no progress with bytes sent"
    assert (done["fromHost"], done["toHost"], done["backend"]) == (src, dst, "qemu")
    assert done.get("downtimeS", 0) > 0 and done.get("totalS", 0) > 0, done
    assert int(done["bytesMoved"]) > 32 << 20, done  # most of a 128 MB guest's pages
    after = lab.running_instances()
    assert len(after) == 1 and after[0].number > before[0].number, "one QEMU, the new one"
    assert lab.ping(), "vm1 does not answer after the move"
    assert stats.received > 0
    print(f"\nqemu live migration {src}->{dst}: QEMU downtime {done['downtimeS'] * 1000:.0f} ms,"
          f" total {done['totalS']:.3f} s, {int(done['bytesMoved'])} bytes;"
          f" ping every 5 ms: {stats.as_dict()}; {done.get('detail', '')}")


def test_destination_killed_mid_migration_rolls_back(lab: QemuLab,
                                                     migrators: list[Process]) -> None:
    # A capped rate makes the memory copy last long enough to kill it midway.
    migrators.append(lab.start_migrator("--qemu-max-bandwidth", "20"))
    src, dst = lab.location, lab.other_host()
    (source,) = lab.running_instances()
    killed: list[int] = []

    def kill_destination(status: dict[str, Any]) -> None:
        if killed or status["phase"] != PROGRESS or int(status.get("bytesMoved", 0)) < 8 << 20:
            return
        newer = [i for i in lab.vm().instances() if i.number > source.number]
        assert newer, "progress without a destination instance"
        assert qemulab.kill_instance(newer[-1]), "destination QEMU not running"
        killed.append(newer[-1].number)

    flood = _flood(lab, "dest-killed")
    try:
        failed = _outcome(lab.migrate(dst, on_status=kill_destination))
        _wait_replies(flood, 40)  # still answering at the source
    finally:
        stats = flood.stop()
    assert killed, "the migration ended before it could be interrupted"
    assert failed["phase"] == FAILED, failed
    assert "rolled back" in failed["error"] and f"live on {src}" in failed["error"], failed
    assert lab.running_instances() == [source], "the source QEMU runs on, alone"
    assert lab.ping(), "vm1 does not answer at the source"
    print(f"\ndestination killed: {failed['error']}; ping: {stats.as_dict()}")


def test_migrator_killed_mid_migration_recovers(lab: QemuLab,
                                                migrators: list[Process]) -> None:
    first = lab.start_migrator("--qemu-max-bandwidth", "10", journal="journal-crash")
    migrators.append(first)
    src, dst = lab.location, lab.other_host()
    (source,) = lab.running_instances()

    def kill_migrator(status: dict[str, Any]) -> None:
        if status["phase"] != PROGRESS or int(status.get("bytesMoved", 0)) < 4 << 20:
            return
        if first.popen.poll() is None:
            first.popen.kill()  # no chance to clean up
            first.popen.wait()
            # Its successor finds the journal and rolls the move back (or, had QEMU
            # finished on its own meanwhile, completes it).
            migrators.append(lab.start_migrator(journal="journal-crash"))

    statuses = lab.migrate(dst, on_status=kill_migrator)
    assert first.popen.returncode is not None, f"the migration ended before the kill: {statuses}"
    failed = _outcome(statuses)
    assert failed["phase"] == FAILED, failed
    assert "migrator restarted during the move" in failed["error"], failed
    running = lab.running_instances()
    assert len(running) == 1, f"one QEMU must run, not {running}"
    if running[0] != source:
        assert f"live on {dst}" in failed["error"], failed
        lab.location = dst
    else:
        assert f"live on {src}" in failed["error"], failed
    assert lab.ping(), "vm1 does not answer after the recovery"
    print(f"\nmigrator killed: {failed['error']}")


def test_migrator_killed_before_qemu_finished_completes_the_move(
        lab: QemuLab, migrators: list[Process]) -> None:
    """QEMU finishes a migration on its own; the next migrator completes the move."""
    first = lab.start_migrator(journal="journal-finished")
    migrators.append(first)
    dst = lab.other_host()
    (source,) = lab.running_instances()
    resumed: list[int] = []

    def kill_migrator(status: dict[str, Any]) -> None:
        if status["phase"] != PROGRESS or not int(status.get("bytesMoved", 0)):
            return
        if first.popen.poll() is None:
            first.popen.kill()
            first.popen.wait()
            newer = [i for i in lab.vm().instances() if i.number > source.number]
            qemulab.wait_run_state(newer[-1], "running")  # QEMU finished without it
            resumed.append(newer[-1].number)
            migrators.append(lab.start_migrator(journal="journal-finished"))

    statuses = lab.migrate(dst, on_status=kill_migrator)
    assert resumed, f"the migrator was not killed mid-move: {statuses}"
    failed = _outcome(statuses)
    assert failed["phase"] == FAILED, failed
    assert "had completed without the migrator" in failed["error"], failed
    assert f"live on {dst}" in failed["error"], failed
    assert [i.number for i in lab.running_instances()] == resumed, "the destination alone"
    lab.location = dst
    assert lab.ping(), "vm1 does not answer at the destination"
    print(f"\nmigrator killed, QEMU finished: {failed['error']}")
