"""The multi-tier web site on the embedded testbed, carried by vnet forwarders.

Five guests on three hosts, every tier on another host than the tiers it
talks to, so each request crosses vnet (host namespaces neither bridge nor
route guest traffic): client -> front (h3 -> h1), front -> app and img
(h1 -> h2), app -> db (h2 -> h3). The forwarders' frame counts on the bus
confirm it pair by pair. Processes, namespaces and the work directory go on
exit, also when the test fails.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from services.bus import topics
from services.bus.client import BusClient
from services.bus.launch import Launcher, stop_process
from services.bus.paircols import rows_of
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings
from services.forwarder.launch import start_forwarder
from services.testbed.spec import TestbedSpec
from services.testbed.testbed import Testbed
from services.workloads import web, webconf
from services.workloads.collect import ReportCollector
from services.workloads.web import WebSettings, WebSite, WebSiteError, missing_tools
from services.workloads.webconf import Catalogue
from services.workloads.webhog import LoadError, cgroup_root
from tests.testbed.conftest import needs_netns

MISSING = missing_tools()
pytestmark = [
    pytest.mark.netns, pytest.mark.slow, needs_netns,
    pytest.mark.skipif(bool(MISSING), reason=f"web site needs {', '.join(MISSING)}: "
                                             "`make apt` installs nginx, postgresql and wrk"),
]

SPEC = {
    "guest_mtu": 1400,
    "site": [{"name": "cluster"}],
    "host": [{"name": "proxy", "site": "cluster", "proxy": True},
             {"name": "h1", "site": "cluster"}, {"name": "h2", "site": "cluster"},
             {"name": "h3", "site": "cluster"}],
    "guest": [{"name": "front", "host": "h1"}, {"name": "app", "host": "h2"},
              {"name": "img", "host": "h2"}, {"name": "db", "host": "h3"},
              {"name": "client", "host": "h3"}],
}
TIERS = {"front": "front", "app": "app", "db": "db", "img": "img", "client": "client"}
# Small catalogue and few connections: quick to load, light on 2 shared cores.
SETTINGS = WebSettings(catalogue=Catalogue(items=200, authors=50, customers=50, orders=300),
                       connections=4, request_timeout_s=5.0, ready_timeout_s=40.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Testbed, BusSettings, Path]]:
    """One testbed for the module (building it is most of the time); each test runs
    its own site on it."""
    tmp_path = tmp_path_factory.mktemp("web")
    with ExitStack() as stack:
        tb = stack.enter_context(Testbed(TestbedSpec.from_dict(SPEC, "web")))
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


def pair_bytes(counts: list[pb.FrameCounts], macs: dict[str, str]) -> dict[tuple[str, str], int]:
    """Bytes forwarded between guests (by name) as the forwarders counted them."""
    name = {mac: guest for guest, mac in macs.items()}
    latest: dict[tuple[str, str, str], int] = {}  # (host, src, dst) -> total bytes
    for fc in counts:
        for src, dst, _, _, _, total in rows_of(fc):
            if src in name and dst in name:
                key = (fc.host, name[src], name[dst])
                latest[key] = max(latest.get(key, 0), total)
    out: dict[tuple[str, str], int] = {}
    for (_, src, dst), total in latest.items():
        out[src, dst] = out.get((src, dst), 0) + total
    return out


async def test_the_web_site_serves_its_load_over_vnet_and_reports_on_the_bus(
        world: tuple[Testbed, BusSettings, Path]) -> None:
    tb, bus, logs = world
    logs = logs / "serves"
    logs.mkdir()
    frames = BusClient(bus, "test", "frames")
    frames.subscribe(topics.FRAMES + ".")
    try:
        await frames.ready()
        async with ReportCollector(bus, app=webconf.APP) as reports:
            with WebSite(tb, TIERS, bus, SETTINGS, logs=logs) as site:
                await reports.until(
                    lambda c: sum(1 for r in c.reports.get("client", ()) if r.iterations) >= 5,
                    30.0, "five reports with requests from the load client")
                assert site.dead() == []
                summary = site.stop_load()
                await reports.until(lambda c: c.finished(["client"]), 15.0,
                                    "last report from the load client")
        counts = [m.payload for m in frames.drain(100_000)
                  if isinstance(m.payload, pb.FrameCounts)]
    finally:
        frames.close()

    got = reports.reports["client"]
    running = [r for r in got if not r.done]
    assert running and all(r.app == "web" and r.interval_s > 0 for r in running)
    assert all(r.iterations_per_s > 0 for r in running), [r.iterations_per_s for r in got]
    assert [r.error for r in got if r.error] == []
    assert got[-1].done and got[-1].iterations == summary["requests"], (got[-1], summary)
    assert summary["exit_code"] == 0 and summary["failed_total"] == 0, summary
    assert summary["requests"] > 0 and summary["ok"] == summary["requests"], summary

    macs = {g.name: g.mac for g in tb.guests()}
    crossed = pair_bytes(counts, macs)
    for pair in [("client", "front"), ("front", "client"), ("front", "app"),
                 ("app", "front"), ("front", "img"), ("img", "front"), ("app", "db"),
                 ("db", "app")]:
        assert crossed.get(pair, 0) > 0, (pair, crossed)
    # The image server carries the bulk bytes back to the front.
    assert crossed["img", "front"] > crossed["app", "front"], crossed


async def test_a_loaded_image_server_is_limited_and_released_without_failed_requests(
        world: tuple[Testbed, BusSettings, Path]) -> None:
    try:
        cgroup_root()
    except LoadError as exc:
        pytest.skip(str(exc))
    tb, bus, logs = world
    logs = logs / "loaded"
    logs.mkdir()
    async with ReportCollector(bus, app=webconf.APP) as reports:
        with WebSite(tb, TIERS, bus, SETTINGS, logs=logs) as site:
            await reports.until(lambda c: len(c.reports.get("client", ())) >= 2, 30.0,
                                "two reports before the load")
            load = site.load_image_server(hogs=1, cpu_limit=0.05)
            assert load.cgroup is not None
            moved = set(load._moved)
            assert site.procs["img"].pid in moved and len(moved) >= 3, moved  # master, worker, hog
            seen = len(reports.reports["client"])
            await reports.until(lambda c: len(c.reports["client"]) >= seen + 3, 30.0,
                                "three reports under load")
            assert load.throttled_s() > 0
            load.release()
            assert load._moved == {} and load.procs == []
            summary = site.stop_load()
    assert summary["failed_total"] == 0 and summary["requests"] > 0, summary
    assert site.loads == [] and load.cgroup is None


def test_a_tier_that_fails_to_start_is_named_and_everything_else_is_stopped(
        world: tuple[Testbed, BusSettings, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    tb, bus, logs = world
    logs = logs / "fails"
    logs.mkdir()
    # An application server that exits at once, as a broken one would.
    monkeypatch.setattr(web, "WEB", [sys.executable, "-c", "raise SystemExit(3)"])
    site = WebSite(tb, TIERS, bus, SETTINGS, logs=logs)
    with pytest.raises(WebSiteError, match=r"app \(app\): exited before its ready line "
                                           r"\(exit code 3\)"):
        site.__enter__()
    assert site.procs == {} and not site.workdir.exists()
    assert "database system is shut down" in (logs / "web-db.log").read_text()
