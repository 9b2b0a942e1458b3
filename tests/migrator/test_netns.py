"""The migrator on the namespace testbed: real forwarders, real veths, real TCP."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.bus import topics
from services.bus.pb import vnet_pb2 as pb
from tests.migrator.world import Watcher, World, build_world, settle

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    extra = getattr(request, "param", None)
    with build_world(tmp_path, extra) as w:
        try:
            yield w
        except BaseException:
            print(w.logs_text())
            raise


def _ip(world: World, guest: str) -> str:
    return world.tb.guest(guest).ip.split("/")[0]


def _phases(watch: Watcher, mid: str) -> list[int]:
    return [s.phase for s in watch.statuses if s.migration_id == mid]


async def test_a_tcp_stream_survives_a_move_and_ping_keeps_answering(world: World) -> None:
    tb = world.tb
    server = tb.popen(tb.guest("g2").netns, ["iperf3", "-s", "-1"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with Watcher(world.bus) as watch:
            await watch.wait_states()
            assert world.ping("g1", "g2")
            await settle(0.5)  # iperf3's server is listening by now
            client = tb.popen(tb.guest("g1").netns,
                              ["iperf3", "-c", _ip(world, "g2"), "-t", "6", "-b", "200M",
                               "-J"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            flood = tb.popen(tb.guest("g3").netns,
                             ["ping", "-i", "0.005", "-c", "800", "-W", "1", _ip(world, "g2")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            await settle(2.0)
            # The operator's command, followed to the end.
            move = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.cli.main", "migrate", "g2", "h3",
                "--id", "m-tcp", "--bus-pub", world.bus.pub, "--bus-sub", world.bus.sub,
                "--timeout", "60", stdout=asyncio.subprocess.PIPE, cwd=str(ROOT))
            out, _ = await move.communicate()
            assert move.returncode == 0, out.decode()
            assert "done: g2 h2 -> h3" in out.decode()
            done = await watch.wait_outcome("m-tcp")
            iperf_out, _ = await asyncio.to_thread(client.communicate, timeout=30)
            flood_out, _ = await asyncio.to_thread(flood.communicate, timeout=30)
            await watch.until(lambda: watch.live_on("g2") == ["h3"], 10, "g2 live on h3 only")
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
    assert done.phase == pb.MIGRATION_PHASE_DONE, done.error
    assert _phases(watch, "m-tcp")[0] == pb.MIGRATION_PHASE_STARTED
    assert 0 < done.downtime_s < done.total_s
    assert world.iface_host("g2") == ["h3"]
    report = json.loads(iperf_out)
    assert "error" not in report, report.get("error")  # no reset, no stall
    intervals = [i["sum"]["bytes"] for i in report["intervals"]]
    assert len(intervals) >= 6 and all(b > 0 for b in intervals[3:]), intervals
    text = flood_out.decode()
    received = int(text.split(" received")[0].rsplit(" ", 1)[1])
    print(f"move: total {done.total_s * 1000:.1f} ms, downtime {done.downtime_s * 1000:.1f} ms;"
          f" ping flood lost {800 - received} of 800 (5 ms apart);"
          f" iperf3 retransmits {report['end']['sum_sent'].get('retransmits')}")
    assert received >= 700
    assert world.ping("g1", "g2") and world.ping("g3", "g2")


async def test_bad_requests_are_refused_and_change_nothing(world: World) -> None:
    async with Watcher(world.bus) as watch:
        await watch.wait_states()
        watch.request("m-unknown-guest", "nope", "h3")
        watch.request("m-unknown-host", "g2", "h9")
        watch.request("m-same-host", "g2", "h2")
        watch.request("m-first", "g1", "h3")
        watch.request("m-second", "g1", "h2")
        errors = {mid: (await watch.wait_outcome(mid)).error for mid in
                  ("m-unknown-guest", "m-unknown-host", "m-same-host", "m-second")}
        first = await watch.wait_outcome("m-first")
    assert "unknown guest 'nope'" in errors["m-unknown-guest"]
    assert "unknown host 'h9'" in errors["m-unknown-host"]
    assert "already on 'h2'" in errors["m-same-host"]
    assert "already moving" in errors["m-second"]
    assert first.phase == pb.MIGRATION_PHASE_DONE, first.error
    assert world.iface_host("g2") == ["h2"] and world.iface_host("g1") == ["h3"]
    assert world.ping("g1", "g2")


async def test_right_after_a_restart_a_request_waits_for_the_host_it_names(
        world: World) -> None:
    """A restarted migrator has heard from no forwarder: a move to a host whose
    forwarder comes up within the settling time goes ahead instead of being refused."""
    async with Watcher(world.bus) as watch:
        await watch.wait_states()
        world.kill_forwarder("h3")
        world.kill_migrator(signal.SIGTERM)
        world.start_migrator(["--recover-wait-s", "20"])
        watch.request("m-early", "g1", "h3")
        await watch.poll_for(1.0)  # the request is in; h3 has not said a word to this migrator
        assert watch.outcome("m-early") is None
        world.start_forwarder("h3")
        done = await watch.wait_outcome("m-early", 60)
    assert done.phase == pb.MIGRATION_PHASE_DONE, done.error
    assert world.iface_host("g1") == ["h3"]
    assert world.ping("g1", "g2")


SLOW_COPY = ["--memory-mb", "3072"]  # a few seconds of copying: time to strike mid-move


@pytest.mark.parametrize("world", [SLOW_COPY], indirect=True)
async def test_a_destination_that_dies_mid_move_leaves_the_guest_at_its_source(
        world: World) -> None:
    async with Watcher(world.bus) as watch:
        await watch.wait_states()
        watch.request("m-dest-dies", "g2", "h3")
        await watch.until(lambda: any(
            s.migration_id == "m-dest-dies" and "memory" in s.detail
            for s in watch.statuses), 30, "the memory copy to start")
        world.kill_forwarder("h3")
        failed = await watch.wait_outcome("m-dest-dies", 90)
        await watch.until(lambda: watch.live_on("g2") == ["h2"], 10, "g2 live on h2")
    assert failed.phase == pb.MIGRATION_PHASE_FAILED
    assert "did not bring g2 live" in failed.error and "rolled back" in failed.error
    assert world.iface_host("g2") == ["h2"]
    assert world.ping("g1", "g2")


@pytest.mark.parametrize("world", [SLOW_COPY], indirect=True)
async def test_a_migrator_killed_mid_move_rolls_back_when_it_restarts(world: World) -> None:
    async with Watcher(world.bus) as watch:
        await watch.wait_states()
        watch.request("m-killed", "g2", "h3")
        await watch.until(lambda: bool(watch.states["h3"].waiting) and any(
            s.migration_id == "m-killed" and "memory" in s.detail
            for s in watch.statuses), 30, "the move to be under way")
        world.kill_migrator(signal.SIGKILL)
        # The guest never stopped being reachable, and is in exactly one place.
        assert world.iface_host("g2") == ["h2"]
        assert world.ping("g1", "g2")
        world.start_migrator(SLOW_COPY)
        failed = await watch.wait_outcome("m-killed", 60)
        await watch.until(lambda: not watch.states["h3"].waiting, 10,
                          "h3 to drop its waiting entry")
    assert failed.phase == pb.MIGRATION_PHASE_FAILED
    assert "migrator restarted during the move" in failed.error
    assert world.iface_host("g2") == ["h2"]
    assert watch.live_on("g2") == ["h2"]
    assert world.ping("g1", "g2")
    assert not list(world.journal.glob("*.json"))


async def test_the_planners_migrations_are_carried_out(world: World) -> None:
    async with Watcher(world.bus) as watch:
        await watch.wait_states()
        plan = pb.Plan(plan_id=7, planner="test", migrations=[
            pb.Migration(migration_id="p7-g2", guest_id="g2", from_host="h2", to_host="h1")])
        watch.client.publish(topics.PLAN, plan)
        done = await watch.wait_outcome("p7-g2")
        watch.client.publish(topics.PLAN, plan)  # a republished plan moves nothing twice
        await settle(1.0)
        await watch.poll(0.1)
    assert done.phase == pb.MIGRATION_PHASE_DONE, done.error
    assert [s.migration_id for s in watch.statuses].count("p7-g2") == len(_phases(watch, "p7-g2"))
    assert _phases(watch, "p7-g2").count(pb.MIGRATION_PHASE_STARTED) == 1
    assert world.iface_host("g2") == ["h1"]
    assert world.ping("g1", "g2") and world.ping("g3", "g2")


async def test_dry_run_says_what_it_would_do_and_moves_nothing(world: World) -> None:
    world.kill_migrator(signal.SIGTERM)
    world.start_migrator(backend="dry-run")
    async with Watcher(world.bus) as watch:
        await watch.wait_states()
        watch.request("m-dry", "g2", "h3")
        done = await watch.wait_outcome("m-dry")
    assert done.phase == pb.MIGRATION_PHASE_DONE and done.backend == "dry-run"
    said = [s.detail for s in watch.statuses if s.migration_id == "m-dry"]
    assert any("would move g2 from h2 to h3" in d for d in said), said
    assert world.iface_host("g2") == ["h2"]
    assert watch.live_on("g2") == ["h2"]
