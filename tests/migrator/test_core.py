"""The migrator's pure core and journal, with a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.bus.pb import vnet_pb2 as pb
from services.migrator.core import MigratorCore
from services.migrator.journal import Journal
from services.migrator.model import Move, Outcome


def _state(host: str, live: tuple[str, ...] = (), waiting: tuple[str, ...] = ()
           ) -> pb.ForwarderState:
    return pb.ForwarderState(
        host=host,
        guests=[pb.Guest(id=g, mac=f"02:00:00:00:00:{i:02x}", kind=pb.ATTACHMENT_PACKET,
                         attachment=f"g-{g}") for i, g in enumerate(live)],
        waiting=[pb.Guest(id=g) for g in waiting])


def _core(max_concurrent: int = 1) -> MigratorCore:
    core = MigratorCore("netns", max_concurrent=max_concurrent, host_stale_s=5.0)
    core.observe(_state("h1", ("g1", "g2", "g3")), 0.0)
    core.observe(_state("h2", ("g4",)), 0.0)
    return core


def _req(mid: str, guest: str, host: str) -> pb.MigrationRequest:
    return pb.MigrationRequest(migration_id=mid, guest_id=guest, to_host=host)


@pytest.mark.parametrize(("guest", "host", "error"), [
    ("nope", "h2", "unknown guest 'nope'"),
    ("g1", "h9", "unknown host 'h9'"),
    ("g1", "h1", "already on 'h1'"),
    ("", "h2", "needs a guest"),
])
def test_bad_requests_are_refused_with_a_reason(guest: str, host: str, error: str) -> None:
    core = _core()
    refused = core.request(_req("m", guest, host), 1.0)
    assert refused is not None and refused.phase == pb.MIGRATION_PHASE_FAILED
    assert error in refused.error
    assert not core.queue and not core.active
    assert core.counters["request_refused"] == 1


def test_a_host_gone_quiet_is_unknown() -> None:
    core = _core()
    refused = core.request(_req("m", "g1", "h2"), 10.0)  # h2's last state is 10 s old
    assert refused is not None and "unknown host 'h2'" in refused.error


def test_a_guest_reported_live_twice_is_not_guessed_at() -> None:
    core = _core()
    core.observe(_state("h2", ("g4", "g1")), 0.5)
    core.observe(_state("h3"), 0.5)
    refused = core.request(_req("m", "g1", "h3"), 1.0)
    assert refused is not None and "live on ['h1', 'h2']" in refused.error


def test_moves_run_within_the_concurrency_limit_and_a_moving_guest_is_refused() -> None:
    core = _core(max_concurrent=1)
    assert core.request(_req("a", "g1", "h2"), 1.0) is None
    assert core.request(_req("b", "g2", "h2"), 1.0) is None
    again = core.request(_req("c", "g1", "h2"), 1.0)
    assert again is not None and "already moving" in again.error
    first = core.start_ready()
    assert [m.migration_id for m in first] == ["a"]
    assert first[0].from_host == "h1" and first[0].guest.attachment == "g-g1"
    assert core.start_ready() == []  # the limit holds
    core.finish(first[0], Outcome(True))
    assert [m.migration_id for m in core.start_ready()] == ["b"]


def test_a_repeated_migration_id_is_taken_once() -> None:
    core = _core()
    assert core.request(_req("a", "g1", "h2"), 1.0) is None
    assert core.request(_req("a", "g1", "h2"), 1.1) is None
    assert len(core.queue) == 1 and core.counters["request_repeated"] == 1


def test_holds_and_live_follow_the_states() -> None:
    core = _core()
    core.observe(_state("h2", ("g4",), waiting=("g1",)), 1.0)
    assert core.holds("h2", "g1") and not core.is_live("h2", "g1")
    core.observe(_state("h2", ("g4", "g1")), 1.1)
    assert core.is_live("h2", "g1")


def test_the_journal_keeps_moves_until_removed_and_sets_aside_garbage(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    move = Move("m/1", pb.Guest(id="g1", mac="02:00:00:00:00:01", attachment="g-g1"),
                "h1", "h2", "test")
    j.write(move, "prepare")
    j.write(move, "switch")
    (tmp_path / "junk.json").write_text("{not json")
    entries = j.entries()
    assert [(e.move, e.phase) for e in entries] == [(move, "switch")]
    assert (tmp_path / "junk.bad").exists()
    j.remove(move)
    assert j.entries() == []


def test_right_after_a_start_a_request_waits_for_the_states_it_names() -> None:
    """Before any forwarder state came, a request is parked, not refused; the states
    that arrive within the settling time let it go ahead."""
    core = MigratorCore("netns", host_stale_s=5.0, settle_until=2.0)
    assert core.request(_req("a", "g1", "h2"), 0.1) is None
    assert core.parked and not core.queue and core.counters["request_parked"] == 1
    core.observe(_state("h2"), 0.5)
    assert core.recheck(0.5) == [] and core.parked and not core.queue  # g1 not heard of yet
    core.observe(_state("h1", ("g1",)), 0.9)
    assert core.recheck(0.9) == []
    assert not core.parked and [m.migration_id for m in core.queue] == ["a"]
    assert core.queue[0].from_host == "h1" and core.counters["request_refused"] == 0


def test_a_parked_request_is_refused_when_the_settling_time_ends() -> None:
    core = MigratorCore("netns", host_stale_s=5.0, settle_until=2.0)
    core.observe(_state("h1", ("g1",)), 0.0)
    assert core.request(_req("a", "g1", "h9"), 0.1) is None
    assert core.recheck(1.9) == [] and len(core.parked) == 1
    refused = core.recheck(2.0)
    assert [s.migration_id for s in refused] == ["a"] and "unknown host 'h9'" in refused[0].error
    assert not core.parked and not core.queue and core.counters["request_refused"] == 1


def test_a_parked_request_does_not_hold_up_one_that_can_go() -> None:
    core = MigratorCore("netns", host_stale_s=5.0, settle_until=2.0)
    core.observe(_state("h1", ("g1",)), 0.0)
    core.observe(_state("h2"), 0.0)
    assert core.request(_req("a", "g1", "h9"), 0.1) is None  # parked: h9 not heard from
    assert core.request(_req("b", "g1", "h2"), 0.2) is None  # goes
    assert [m.migration_id for m in core.queue] == ["b"]
    core.observe(_state("h9"), 0.5)
    refused = core.recheck(0.5)  # a is met again, with g1 on its way to h2
    assert [s.migration_id for s in refused] == ["a"] and "already moving" in refused[0].error


def test_within_the_settling_time_other_faults_are_refused_at_once() -> None:
    core = MigratorCore("netns", host_stale_s=5.0, settle_until=2.0)
    core.observe(_state("h1", ("g1",)), 0.0)
    for req, error in ((_req("a", "", "h1"), "needs a guest"),
                       (_req("b", "g1", "h1"), "already on 'h1'")):
        refused = core.request(req, 0.1)
        assert refused is not None and error in refused.error
    assert not core.parked
