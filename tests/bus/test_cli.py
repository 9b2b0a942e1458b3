"""The `vnet` command as operators run it: tail, keys, broker, settings."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.bus import settings
from services.bus.client import BusClient
from services.bus.launch import VNET, Launcher
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings


async def test_tail_json_prints_the_stable_form(launcher: Launcher, bus: BusSettings) -> None:
    tail = launcher.start("tail", ["tail", "--json", "--count", "3", "--source", "op@*",
                                   "--bus-pub", bus.pub, "--bus-sub", bus.sub, "frames."],
                          stdout=subprocess.PIPE)
    pub = BusClient(bus, "op", "h1")
    other = BusClient(bus, "other", "h1")
    try:
        await pub.ready()
        n = 0
        # Tail subscribes on its own schedule: publish until it has printed 3.
        deadline = time.monotonic() + 20
        while tail.popen.poll() is None and time.monotonic() < deadline:
            n += 1
            pub.publish("frames.h1", pb.FrameCounts(host="h1", interval_index=n, pairs=[
                pb.PairCount(src_mac="02:00:00:00:00:01", dst_mac="02:00:00:00:00:02",
                             frames=n, bytes=100 * n)]))
            other.publish("frames.h2", pb.FrameCounts(host="h2"))
            time.sleep(0.05)
        out, _ = tail.popen.communicate(timeout=10)
    finally:
        pub.close()
        other.close()
    lines = out.decode().splitlines()
    assert tail.popen.returncode == 0 and len(lines) == 3
    for line in lines:
        obj = json.loads(line)
        assert list(obj) == ["topic", "source", "seq", "ts", "body"]
        assert obj["topic"] == "frames.h1" and obj["source"] == "op@h1"
        assert isinstance(obj["seq"], int) and isinstance(obj["ts"], float)
        index = int(obj["body"]["intervalIndex"])
        assert obj["body"]["pairs"][0] == {
            "srcMac": "02:00:00:00:00:01", "dstMac": "02:00:00:00:00:02",
            "frames": str(index), "bytes": str(100 * index)}
    seqs = [json.loads(line)["seq"] for line in lines]
    assert seqs == sorted(seqs)


def test_keys_cli_init_add_list(tmp_path: Path) -> None:
    d = str(tmp_path / "k")
    run = lambda *a: subprocess.run([*VNET, "keys", *a], check=True, capture_output=True,  # noqa: E731
                                    text=True).stdout
    run("init", d)
    assert "connect + control" in run("add", d, "planner", "--control")
    run("add", d, "worker")
    listing = run("list", d).split("\n")
    assert listing[0].split()[:2] == ["planner", "control"]
    assert listing[1].split()[:2] == ["worker", "connect"]
    assert (tmp_path / "k" / "broker.key_secret").exists()


def test_settings_from_environment_and_arguments() -> None:
    import argparse

    env = {"VNET_BUS_PUB": "ipc:///tmp/p", "VNET_MAX_MESSAGE_BYTES": "4096"}
    base = settings.from_environment(env)
    assert base.pub == "ipc:///tmp/p" and base.max_message_bytes == 4096
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    args = parser.parse_args(["--bus-pub", "tcp://127.0.0.1:1"])
    assert settings.from_args(args, env).pub == "tcp://127.0.0.1:1"
    with pytest.raises(ValueError, match="VNET_BUS_HWM='lots'"):
        settings.from_environment({"VNET_BUS_HWM": "lots"})


def test_generated_schema_modules_are_fresh(tmp_path: Path) -> None:
    """The committed vnet_pb2 must be what `make proto` makes of vnet.proto."""
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{root}/proto/vnet/v1",
                    f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
                    f"{root}/proto/vnet/v1/vnet.proto"], check=True)
    for name in ("vnet_pb2.py", "vnet_pb2.pyi"):
        assert (tmp_path / name).read_text() == (root / "services/bus/pb" / name).read_text(), (
            f"{name} is stale: run `make proto` and commit the result")


async def test_tail_rate_counts_each_topic_per_window(launcher: Launcher, bus: BusSettings
                                                      ) -> None:
    tail = launcher.start("tail", ["tail", "--rate", "0.5", "--json", "--duration", "6",
                                   "--source", "op@*", "--bus-pub", bus.pub,
                                   "--bus-sub", bus.sub, "frames."],
                          stdout=subprocess.PIPE)
    pub = BusClient(bus, "op", "h1")
    other = BusClient(bus, "other", "h1")
    sent = {"frames.h1": 0, "frames.h2": 0, "frames.h4": 0}
    try:
        await pub.ready()
        quiet_after = time.monotonic() + 2.5
        while tail.popen.poll() is None:
            for topic, every in (("frames.h1", 1), ("frames.h2", 2)):  # h2 at half the rate
                if sent["frames.h1"] % every == 0:
                    pub.publish(topic, pb.FrameCounts(host=topic[-2:]))
                    sent[topic] += 1
            if time.monotonic() < quiet_after:  # h4 goes quiet after 2.5 s
                pub.publish("frames.h4", pb.FrameCounts(host="h4"))
                sent["frames.h4"] += 1
            other.publish("frames.h3", pb.FrameCounts(host="h3"))  # another source: left out
            other.publish("state.h1", pb.ForwarderState(host="h1"))  # another topic: not asked
            time.sleep(0.02)
        out, _ = tail.popen.communicate(timeout=10)
    finally:
        pub.close()
        other.close()
    assert tail.popen.returncode == 0
    rows = [json.loads(line) for line in out.decode().splitlines()]
    assert {r["topic"] for r in rows} == {"frames.h1", "frames.h2", "frames.h4"}
    assert all(list(r) == ["ts", "topic", "count", "interval_s", "rate_hz"] for r in rows)
    counted = {t: sum(r["count"] for r in rows if r["topic"] == t) for t in sent}
    # tail subscribes on its own schedule, so it may miss the first messages, never more
    assert 0.5 * sent["frames.h1"] < counted["frames.h1"] <= sent["frames.h1"]
    assert 0.5 * sent["frames.h2"] < counted["frames.h2"] <= sent["frames.h2"]
    windows = [r for r in rows if r["topic"] == "frames.h1"]
    assert len(windows) >= 8 and all(0.3 < r["interval_s"] < 0.8 for r in windows[:-1])
    for r in windows[:-1]:
        assert r["rate_hz"] == pytest.approx(r["count"] / r["interval_s"], rel=0.01, abs=0.02)
    assert 1.6 < counted["frames.h1"] / counted["frames.h2"] < 2.4  # h2 went at half h1's rate
    quiet = [r for r in rows if r["topic"] == "frames.h4"]
    assert quiet[0]["count"] > 0 and [r["count"] for r in quiet[-4:]] == [0, 0, 0, 0]
    assert 0.5 * sent["frames.h4"] < counted["frames.h4"] <= sent["frames.h4"]


def test_tail_rate_refuses_count() -> None:
    r = subprocess.run([*VNET, "tail", "--rate", "--count", "3"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0 and "--duration" in r.stderr
