"""The web site's parts without namespaces: configs, the wrk script and its figures,
the client's reports, the application server's HTTP reading, and the launcher's
checks. Where the real tool is installed (nginx, wrk) it reads what we generate."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from services.cli.main import parser
from services.workloads import webconf
from services.workloads.web import TIERS, WebSite
from services.workloads.webapp import BadRequest, parse_head, response
from services.workloads.webclient import LoadParams, LoadTotals, WrkError, WrkRun, parse_wrk
from services.workloads.webconf import Catalogue
from services.workloads.webhog import CpuLoad, server_pids

WRK_OUT = """Running 1s test @ http://10.0.0.1:80/
  1 threads and 4 connections
  412 requests in 1.00s, 5.90MB read
Requests/sec:    411.52
{"wrk": 1, "requests": 412, "bytes": 6190000, "duration_us": 1001150, "connect": 0, \
"read": 1, "write": 0, "status": 2, "timeout": 0, "latency_mean_us": 9650.2, \
"latency_p99_us": 41000}
"""


def test_wrk_figures_are_read_from_the_scripts_line() -> None:
    run = parse_wrk(WRK_OUT)
    assert (run.requests, run.bytes, run.status, run.read) == (412, 6190000, 2, 1)
    assert run.duration_s == pytest.approx(1.00115)
    assert run.latency_mean_ms == pytest.approx(9.6502) and run.latency_p99_ms == 41.0
    assert run.failed == 3 and run.ok == 410
    assert run.failures() == "3 failed requests (status 2, read 1)"
    with pytest.raises(WrkError, match="no figures"):
        parse_wrk("Running 1s test\nunable to connect\n")


def test_each_run_becomes_a_report_with_running_totals() -> None:
    totals = LoadTotals("g5")
    first = totals.add(WrkRun(requests=400, bytes=1000, duration_s=1.0))
    assert (first.app, first.guest, first.iterations) == ("web", "g5", 400)
    assert first.iterations_per_s == 400.0 and first.interval_s == 1.0
    assert first.error == "" and not first.done
    second = totals.add(WrkRun(requests=150, bytes=500, duration_s=0.5, timeout=2), done=True)
    assert second.iterations == 550 and second.iterations_per_s == 300.0
    assert second.bytes_received == 1500 and second.done
    assert second.error == "2 failed requests (timeout 2)"
    summary = totals.summary()
    assert summary["failed_total"] == 2 and summary["requests_per_s"] == pytest.approx(550 / 1.5)


def test_load_params_are_checked_and_become_wrk_arguments(tmp_path: Path) -> None:
    params = LoadParams(front="10.0.0.1/24", connections=4, timeout_s=2.5)
    params.check()
    argv = params.wrk_argv(tmp_path / "mix.lua", 7)
    assert argv[-3:] == ["http://10.0.0.1:80/", "--", "7"]
    assert argv[argv.index("-d") + 1] == "1s" and argv[argv.index("--timeout") + 1] == "2.5s"
    for bad, match in [({"interval_s": 0}, "whole number"), ({"threads": 5}, "threads"),
                       ({"image_share": 1.5}, "image_share"), ({"items": 0}, "items")]:
        with pytest.raises(ValueError, match=match):
            LoadParams(front="10.0.0.1", connections=4, **bad).check()  # type: ignore[arg-type]


def test_the_wrk_script_asks_for_pages_and_images_that_exist() -> None:
    script = webconf.wrk_script(items=50, image_share=0.25)
    assert "local items = 50" in script and "local image_share = 0.25" in script
    for name, _ in webconf.image_names():
        assert f'"/img/{name}"' in script
    assert all(f'"{w}"' in script for w in webconf.WORDS)
    assert webconf.image_of_item(3).startswith("/img/") and webconf.image_of_item(3)[5:] in \
        [n for n, _ in webconf.image_names()]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (`make apt`)")
async def test_wrk_runs_the_script_against_a_server_and_its_figures_parse(
        tmp_path: Path) -> None:
    """wrk loads the generated Lua and done() prints what parse_wrk reads."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (await reader.readuntil(b"\r\n\r\n")):
                writer.write(response(200, b"x" * 100, True))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    script = tmp_path / "mix.lua"
    script.write_text(webconf.wrk_script(items=10, image_share=0.3))
    try:
        proc = await asyncio.create_subprocess_exec(
            "wrk", "-t", "1", "-c", "2", "-d", "1s", "-s", str(script),
            f"http://127.0.0.1:{port}/", "--", "1",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        server.close()
    assert proc.returncode == 0, err
    run = parse_wrk(out.decode())
    assert run.requests > 0 and run.failed == 0 and run.bytes > 0


def test_request_heads_are_read_and_bad_ones_refused() -> None:
    req = parse_head(b"GET /app/search?q=river%20x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (req.method, req.path, req.query, req.keep_alive) == \
        ("GET", "/app/search", {"q": ["river x"]}, True)
    assert not parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive
    assert not parse_head(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    assert parse_head(b"POST /app/buy/3 HTTP/1.1\r\nContent-Length: 12\r\n\r\n"
                      ).content_length == 12
    for bad in (b"GET /\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
                b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"):
        with pytest.raises(BadRequest):
            parse_head(bad)
    out = response(404, b"gone", False)
    assert out.startswith(b"HTTP/1.1 404 Not Found\r\n") and out.endswith(b"\r\n\r\ngone")
    assert b"Content-Length: 4\r\n" in out and b"Connection: close\r\n" in out


def test_configs_name_the_guests_and_the_work_directory(tmp_path: Path) -> None:
    front = webconf.nginx_front_conf(tmp_path, "10.0.0.1/24", "10.0.0.2", "10.0.0.4")
    assert "listen 10.0.0.1:80;" in front
    assert "server 10.0.0.2:8000;" in front and "server 10.0.0.4:80;" in front
    img = webconf.nginx_img_conf(tmp_path, "10.0.0.4", tmp_path / "www")
    assert f"root {tmp_path / 'www'};" in img and "listen 10.0.0.4:80;" in img
    assert webconf.subnet("10.0.0.3", 24) == "10.0.0.0/24"
    assert "host all all 10.0.0.0/24 trust" in webconf.pg_hba("10.0.0.0/24")
    settings = webconf.postgres_settings("10.0.0.3/24", tmp_path)
    assert "listen_addresses=10.0.0.3" in settings and "port=5432" in settings
    total = webconf.write_images(tmp_path / "www")
    files = sorted((tmp_path / "www" / "img").iterdir())
    assert len(files) == len(webconf.image_names())
    assert total == sum(f.stat().st_size for f in files) == \
        sum(size for _, size in webconf.image_names())


@pytest.mark.skipif(shutil.which("nginx") is None or os.geteuid() != 0,
                    reason="needs nginx (`make apt`) and root")
def test_nginx_accepts_both_configs(tmp_path: Path) -> None:
    www = tmp_path / "www"
    webconf.write_images(www)
    for name, conf in [("front", webconf.nginx_front_conf(tmp_path, "127.0.0.1", "127.0.0.2",
                                                          "127.0.0.3")),
                       ("img", webconf.nginx_img_conf(tmp_path, "127.0.0.1", www))]:
        (tmp_path / "temp").mkdir(exist_ok=True)
        path = tmp_path / f"{name}.conf"
        path.write_text(conf)
        done = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(path),
                               "-e", "stderr"], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, (name, done.stderr)


def test_the_catalogue_and_the_tiers_are_checked() -> None:
    with pytest.raises(ValueError, match="items"):
        Catalogue(items=0).check()
    with pytest.raises(ValueError, match="missing: \\['img'\\]"):
        WebSite(object(), {t: t for t in TIERS if t != "img"}, None)
    with pytest.raises(ValueError, match="unknown: \\['cache'\\]"):
        WebSite(object(), {**{t: t for t in TIERS}, "cache": "x"}, None)


def test_a_servers_processes_include_its_group_and_descendants() -> None:
    # One child in the group, one in a session of its own (as PostgreSQL's backends).
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & setsid sleep 30 & wait"],
                            start_new_session=True)
    try:
        found: list[int] = []
        for _ in range(100):
            found = server_pids(proc.pid)
            if len(found) >= 3:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert proc.pid in found and len(found) == 3, found
        assert len({os.getsid(pid) for pid in found}) == 2
    finally:
        for pid in server_pids(proc.pid)[::-1]:
            os.kill(pid, 9)
        proc.wait()


def test_a_load_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="hogs"):
        CpuLoad(object(), "ns", "x", [], hogs=-1)
    with pytest.raises(ValueError, match="cpu_limit"):
        CpuLoad(object(), "ns", "x", [], cpu_limit=0)


def test_vnet_web_has_the_app_and_client_commands() -> None:
    args = parser().parse_args(["web", "client", "--front", "10.0.0.1", "--no-bus"])
    assert args.front == "10.0.0.1" and args.connections == 8 and args.interval_s == 1
    args = parser().parse_args(["web", "app", "--listen", "10.0.0.2:8000", "--db",
                                "10.0.0.3:5432", "--items", "50"])
    assert args.items == 50 and args.db == "10.0.0.3:5432"
