"""Patterns on the embedded testbed: four guests in a ring, carried by vnet forwarders.

The guests' namespaces reach one another only through the forwarders (hosts
neither bridge nor route guest traffic), so a run that completes iterations
went over vnet. Workers, forwarders, broker and namespaces are stopped and
removed by the fixture, also when the test fails.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from services.bus.launch import Launcher, stop_process
from services.bus.settings import BusSettings
from services.forwarder.launch import start_forwarder
from services.testbed.spec import load_spec
from services.testbed.testbed import Testbed
from services.workloads.launch import Workload, run_and_collect
from tests.testbed.conftest import needs_netns

pytestmark = [pytest.mark.netns, needs_netns]

SPEC = Path(__file__).resolve().parents[2] / "services" / "testbed" / "specs" / "cluster.toml"
GUESTS = ["g1", "g2", "g3", "g4"]  # on h1, h2, h3, h3: three cross hosts, one stays on h3


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Testbed, BusSettings, Path]]:
    with ExitStack() as stack:
        tb = stack.enter_context(Testbed(load_spec(SPEC)))
        launcher = stack.enter_context(Launcher())
        with open(tmp_path / "broker.log", "ab") as err:
            broker = launcher.start_broker_ipc(tb.run_dir, stderr=err.fileno())
        bus = BusSettings(pub=str(broker.info["pub"]), sub=str(broker.info["sub"]))
        forwarders: list[subprocess.Popen[bytes]] = []

        def stop_forwarders() -> None:
            for proc in forwarders:
                stop_process(proc, 10)

        stack.callback(stop_forwarders)
        for host in tb.hosts():
            forwarders.append(start_forwarder(tb, host, bus, log=tmp_path / f"fw-{host}.log"))
        yield tb, bus, tmp_path


async def test_a_ring_of_four_guests_runs_over_vnet_and_reports_on_the_bus(
        world: tuple[Testbed, BusSettings, Path]) -> None:
    tb, bus, logs = world
    work = Workload(topology="ring", msg_bytes=16384, compute_s=0.005, duration_s=2.0,
                    report_interval_s=0.5, connect_timeout_s=15.0)
    ends, reports = await run_and_collect(tb, GUESTS, work, bus, logs, timeout=25.0)
    for guest in GUESTS:
        end = ends[guest]
        assert end["exit_code"] == 0 and not end["error"], (guest, end)
        assert end["iterations"] > 0, (guest, end)
        got = reports[guest]
        assert got[-1].done and got[-1].iterations == end["iterations"]
        assert got[-1].guest == guest and got[-1].rank == GUESTS.index(guest)
        assert any(r.iterations > 0 and r.iterations_per_s > 0 for r in got if not r.done)
    iterations = [int(e["iterations"]) for e in ends.values()]
    assert max(iterations) - min(iterations) <= 1, ends
