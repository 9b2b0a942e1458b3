"""Forwarders as real processes in the testbed's host namespaces, real frames.

One testbed per module (hosts proxy, h1, h2; guests g1+g3 on h1, g2 on h2,
gt on h2 over a TAP, gp on the proxy) and a broker on ipc:// endpoints, which
reach into every namespace through the filesystem.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.bus import topics
from services.bus.client import BusClient
from services.bus.launch import Launcher
from services.bus.paircols import PairRow, rows_of
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings
from services.forwarder.launch import start_forwarder
from services.testbed.spec import TestbedSpec
from services.testbed.testbed import Testbed

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parents[2]
PORT = 7000
SPEC = {
    "guest_mtu": 1400,
    "site": [{"name": "c"}],
    "host": [{"name": "proxy", "site": "c", "proxy": True}, {"name": "h1", "site": "c"},
             {"name": "h2", "site": "c"}],
    "guest": [{"name": "g1", "host": "h1"}, {"name": "g2", "host": "h2"},
              {"name": "g3", "host": "h1"}, {"name": "gp", "host": "proxy"},
              {"name": "gt", "host": "h2", "attach": "tap"}],
}


@dataclass
class Net:
    tb: Testbed
    bus: BusSettings
    mode: str = "fastpath"  # or "python": every frame in Python, on asyncio's own loop
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    generation: int = 0

    def addr(self, host: str) -> str:
        return f"{self.tb.underlay_ip(host)}:{PORT}"

    def start(self, host: str) -> None:
        self.procs[host] = start_forwarder(
            self.tb, host, self.bus, log=self.tb.run_dir / f"forwarder-{host}.log", port=PORT,
            extra=["--update-rate-hz", "20", "--keepalive-s", "0.2", "--bus-heartbeat-s", "0.2",
                   *(["--no-fastpath", "--loop", "asyncio"] if self.mode == "python" else [])])

    def stop(self, host: str) -> None:
        proc = self.procs.pop(host)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()

    def log(self, host: str) -> str:
        return (self.tb.run_dir / f"forwarder-{host}.log").read_text(errors="replace")

    def ping_ok(self, src: str, dst: str, count: int = 1) -> bool:
        g, d = self.tb.guest(src), self.tb.guest(dst)
        r = self.tb.run(g.netns, ["ping", "-c", str(count), "-i", "0.05", "-W", "1", d.ip],
                        check=False)
        return r.returncode == 0

    def wait_ping(self, src: str, dst: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping_ok(src, dst):
                return
        raise AssertionError(f"{src} cannot ping {dst} within {timeout}s")


@pytest.fixture(scope="module", params=["fastpath", "python"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        ) -> Iterator[Net]:
    """Every test runs twice: with the compiled fast path, and all in Python."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    ipc = tmp_path_factory.mktemp("bus")
    with Launcher() as launch:
        broker = launch.start_broker_ipc(ipc)
        bus = BusSettings(pub=str(broker.info["pub"]), sub=str(broker.info["sub"]))
        with Testbed(TestbedSpec.from_dict(SPEC, name="fwd")) as tb:
            n = Net(tb, bus, mode=request.param)
            try:
                for host in ("proxy", "h1", "h2"):
                    n.start(host)
                yield n
            finally:
                for host in list(n.procs):
                    n.stop(host)


async def _client(net: Net, *prefixes: str) -> BusClient:
    client = BusClient(net.bus, "test", "t")
    for p in prefixes:
        client.subscribe(p)
    await client.ready()
    return client


async def _until(client: BusClient, topic: str, pred: object, timeout: float = 15.0) -> object:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        for msg in await client.recv_batch(timeout=left):
            if msg.topic == topic and callable(pred) and pred(msg.payload):
                return msg.payload
    raise AssertionError(f"no {topic} message matching within {timeout}s")


def test_ping_and_tcp_through_the_star(net: Net) -> None:
    net.wait_ping("g1", "g2")
    assert net.ping_ok("g1", "g2", count=5)
    net.wait_ping("g1", "gp")
    net.wait_ping("g3", "gt")  # TAP guest on h2
    net.wait_ping("g1", "g3")  # two guests of one host, locally
    # TCP with offloads on: GSO frames and partial checksums cross the overlay.
    tb = net.tb
    tools = [sys.executable, "-m", "tests.forwarder.netns_tools"]
    for dst in ("g2", "gt"):
        g = tb.guest(dst)
        sink = tb.popen(g.netns, [*tools, "sink"], stdout=subprocess.PIPE, cwd=str(ROOT))
        assert sink.stdout is not None
        assert sink.stdout.readline().strip() == b"ready"
        sent = tb.run(tb.guest("g1").netns, [*tools, "source", "--ip", g.ip], cwd=str(ROOT),
                      timeout=60)
        got, _ = sink.communicate(timeout=60)
        assert got.decode().strip() == sent.stdout.strip()
        assert sent.stdout.startswith(str(20 << 20))


async def test_guests_reach_the_users_lan_through_the_proxy(net: Net) -> None:
    tb = net.tb
    for guest in ("g1", "gt", "gp"):
        deadline = time.monotonic() + 15
        while True:
            r = tb.run(tb.guest(guest).netns, ["ping", "-c", "1", "-W", "1", tb.lan_ip],
                       check=False)
            if r.returncode == 0:
                break
            assert time.monotonic() < deadline, f"{guest} cannot reach the LAN at {tb.lan_ip}"
    # And the LAN machine reaches a guest on another host.
    r = tb.run(tb.lan_netns, ["ping", "-c", "2", "-W", "2", tb.guest("g2").ip], check=False)
    assert r.returncode == 0, r.stdout


async def test_counters_equal_injected_frames(net: Net) -> None:
    net.wait_ping("g1", "g2")
    client = await _client(net, "frames.h1")
    try:
        src, dst = "02:00:00:aa:00:01", net.tb.guest("g2").mac
        net.tb.run(net.tb.guest("g1").netns,
                   [sys.executable, "-m", "tests.forwarder.netns_tools", "inject", "--src", src,
                    "--dst", dst, "--count", "37", "--payload", "86"], cwd=str(ROOT))
        seen = 0
        deadline = time.monotonic() + 15
        last: PairRow | None = None
        intervals: list[float] = []
        while time.monotonic() < deadline and (last is None or last[4] < 37):
            for msg in await client.recv_batch(timeout=1.0):
                if msg.topic != "frames.h1":
                    continue
                assert isinstance(msg.payload, pb.FrameCounts)
                intervals.append(msg.payload.interval_s)
                for row in rows_of(msg.payload):
                    if row[:2] == (src, dst):
                        seen += row[2]
                        last = row
        assert last is not None, "pair never published"
        assert (seen, last[4], last[5]) == (37, 37, 37 * 100)
        assert intervals and all(i == pytest.approx(0.05) for i in intervals)
    finally:
        client.close()


async def test_frames_take_the_path_the_mode_says(net: Net) -> None:
    """The compiled path carries the ping (or nothing carries it fast, in Python mode)."""
    client = await _client(net, "heartbeat.forwarder.h1")
    try:
        net.wait_ping("g1", "g2")
        assert net.ping_ok("g1", "g2", count=5)
        hb = await _until(client, "heartbeat.forwarder.h1", lambda hb: True)
        assert isinstance(hb, pb.Heartbeat)
        if net.mode == "fastpath":
            await _until(client, "heartbeat.forwarder.h1",
                         lambda hb: hb.counters.get("fastpath_frames", 0) >= 5)
        else:
            assert "fastpath_frames" not in hb.counters
    finally:
        client.close()


async def test_fast_path_over_the_bus_and_broadcast_once(net: Net) -> None:
    tb = net.tb
    net.wait_ping("g1", "g2")
    client = await _client(net, "state.h1", "state.h2", "links.h1")
    try:
        net.generation += 1
        gen = net.generation
        g1, g2, g3 = tb.guest("g1"), tb.guest("g2"), tb.guest("g3")
        link = pb.LinkSpec(id="h1-h2", transport=pb.TRANSPORT_TCP, fast_path=True)
        for host, peer, macs in (("h1", "h2", [g2.mac, tb.guest("gt").mac]),
                                 ("h2", "h1", [g1.mac, g3.mac])):
            spec = pb.LinkSpec()
            spec.CopyFrom(link)
            spec.peer_host, spec.peer_address = peer, net.addr(peer)
            want = pb.DesiredState(host=host, generation=gen, links=[spec],
                                   rules=[pb.Rule(dst_mac=m, link_id="h1-h2") for m in macs])
            client.publish(topics.join(topics.DESIRED, host), want)

        def fast_up(st: object) -> bool:
            assert isinstance(st, pb.ForwarderState)
            return st.generation == gen and any(
                ls.spec.id == "h1-h2" and ls.up for ls in st.links)

        await _until(client, "state.h1", fast_up)
        before = await _until(client, "links.h1", lambda m: True)
        assert isinstance(before, pb.LinkMeasurements)
        tx0 = {m.link_id: m.tx_frames for m in before.links}
        assert net.ping_ok("g1", "g2", count=5)

        def moved(m: object) -> bool:
            assert isinstance(m, pb.LinkMeasurements)
            now = {x.link_id: x.tx_frames for x in m.links}
            return now.get("h1-h2", 0) - tx0.get("h1-h2", 0) >= 5

        after = await _until(client, "links.h1", moved)
        assert isinstance(after, pb.LinkMeasurements)
        fast = next(m for m in after.links if m.link_id == "h1-h2")
        assert fast.up and fast.rtt_ms > 0

        # Broadcast from g1 reaches every other guest exactly once, fast path or not.
        receivers = {}
        for name in ("g2", "g3", "gp", "gt"):
            g = tb.guest(name)
            iface = g.host_ifname if g.attach == "tap" else "eth0"
            p = tb.popen(g.netns,
                         [sys.executable, "-m", "tests.forwarder.netns_tools", "count",
                          "--iface", iface],
                         stdout=subprocess.PIPE, cwd=str(ROOT))
            assert p.stdout is not None
            assert p.stdout.readline().strip() == b"ready"
            receivers[name] = p
        tb.run(g1.netns, [sys.executable, "-m", "tests.forwarder.netns_tools", "inject",
                          "--src", g1.mac, "--dst", "ff:ff:ff:ff:ff:ff", "--count", "3",
                          "--end", "0x88b6"], cwd=str(ROOT))
        for name, p in receivers.items():
            out, _ = p.communicate(timeout=30)
            assert out.strip() == b"3", f"{name} got {out!r}"
    finally:
        client.close()


async def test_bad_desired_state_is_counted_and_forwarding_goes_on(net: Net) -> None:
    client = await _client(net, "heartbeat.forwarder.h1", "state.h1")
    try:
        net.generation += 1
        bad = pb.DesiredState(host="h1", generation=net.generation,
                              rules=[pb.Rule(dst_mac=net.tb.guest("g2").mac, link_id="nowhere")])
        client.publish("desired.h1", bad)
        await _until(client, "heartbeat.forwarder.h1",
                     lambda hb: hb.counters.get("rule_unknown_link", 0) >= 1)
        client.publish("desired.h1", pb.DesiredState(host="h1", generation=0))
        await _until(client, "heartbeat.forwarder.h1",
                     lambda hb: hb.counters.get("desired_stale", 0) >= 1)
        st = await _until(client, "state.h1", lambda s: True)
        assert isinstance(st, pb.ForwarderState) and st.generation == net.generation
        net.wait_ping("g1", "g2")
        assert "rule names unknown link 'nowhere'" in net.log("h1")
    finally:
        client.close()


def test_proxy_restart_restores_the_star(net: Net) -> None:
    net.wait_ping("g1", "gp")
    net.stop("proxy")
    assert not net.ping_ok("g1", "gp")
    net.start("proxy")
    net.wait_ping("g1", "gp", timeout=20)
    net.wait_ping("g3", "gt", timeout=20)


def test_tcp_garbage_and_strangers_do_not_hurt(net: Net) -> None:
    script = (
        "import socket,struct,sys\n"
        f"s=socket.create_connection(('{net.tb.underlay_ip('proxy')}',{PORT}))\n"
        "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
        "print(s.recv(100))\n"
        f"s=socket.create_connection(('{net.tb.underlay_ip('proxy')}',{PORT}))\n"
        "b=b'vnet1\\nmallory\\nx\\n1\\n'\n"
        "s.sendall(struct.pack('!I',len(b)+1)+b'\\x01'+b)\n"
        "print(s.recv(200))\n"
    )
    r = net.tb.run(net.tb.host_netns("h1"), [sys.executable, "-c", script])
    assert "not in the membership" in r.stdout
    net.wait_ping("g1", "g2")
    log = net.log("proxy")
    assert "link_bad_length" in log and "link_refused" in log


def test_vnet_apply_then_links_rules_guests(net: Net) -> None:
    tb = net.tb
    g1, g2, g3 = tb.guest("g1"), tb.guest("g2"), tb.guest("g3")
    desc = tb.run_dir / "overlay.toml"
    desc.write_text(
        "\n".join(f'[[host]]\nname = "{h}"\naddress = "{net.addr(h)}"'
                  for h in ("proxy", "h1", "h2"))
        + "".join(f'\n[[guest]]\nname = "{g.name}"\nhost = "{g.host}"\nmac = "{g.mac}"'
                  for g in (g1, g2, g3))
        + '\n[[link]]\nid = "u12"\nhosts = ["h1", "h2"]\ntransport = "udp"'
        + '\n[[rule]]\nhost = "h1"\ndst = "g2"\nlink = "u12"'
        + '\n[[rule]]\nhost = "h2"\ndst = "g1"\nlink = "u12"\n'
    )
    vnet = [sys.executable, "-m", "services.cli.main"]
    bus = ["--bus-pub", net.bus.pub, "--bus-sub", net.bus.sub]
    dry = subprocess.run([*vnet, "apply", str(desc), "--dry-run", *bus], capture_output=True,
                         text=True, timeout=60, cwd=str(ROOT))
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "+ link u12 -> h2" in dry.stdout and "+ rule dst=" + g2.mac in dry.stdout
    done = subprocess.run([*vnet, "apply", str(desc), *bus], capture_output=True, text=True,
                          timeout=60, cwd=str(ROOT))
    assert done.returncode == 0 and "applied generation" in done.stdout, done.stdout
    net.generation = int(done.stdout.split("applied generation ")[1].split()[0])
    deadline = time.monotonic() + 15
    while True:
        links = subprocess.run([*vnet, "links", "h1", *bus], capture_output=True, text=True,
                               timeout=60, cwd=str(ROOT))
        row = [line for line in links.stdout.splitlines() if line.startswith("u12 ")]
        if (row and " yes " in row[0]) or time.monotonic() > deadline:
            break
    assert row and "UDP" in row[0] and " yes " in row[0], links.stdout
    net.wait_ping("g1", "g2")
    rules = subprocess.run([*vnet, "rules", "h1", *bus], capture_output=True, text=True,
                           timeout=60, cwd=str(ROOT))
    assert f"rule dst={g2.mac} src=* -> link u12" in rules.stdout
    guests = subprocess.run([*vnet, "guests", "h2", *bus], capture_output=True, text=True,
                            timeout=60, cwd=str(ROOT))
    assert "gt " in guests.stdout and " tap " in guests.stdout, guests.stdout
    again = subprocess.run([*vnet, "apply", str(desc), "--dry-run", *bus], capture_output=True,
                           text=True, timeout=60, cwd=str(ROOT))
    assert "h1: no change" in again.stdout, again.stdout


async def test_a_vanished_guest_interface_is_detached_not_fatal(net: Net) -> None:
    tb = net.tb
    client = await _client(net, "heartbeat.forwarder.h1")
    try:
        subprocess.run(["ip", "-n", tb.host_netns("h1"), "link", "del", tb.guest("g3").host_ifname],
                       check=True, timeout=10)
        await _until(client, "heartbeat.forwarder.h1",
                     lambda hb: hb.counters.get("guest_detached", 0) == 1)
        net.wait_ping("g1", "g2")
        assert net.procs["h1"].poll() is None
    finally:
        client.close()
