"""The I/O shell in one process: links, star, handshake, keepalives, bad input.

Guests are fake QEMU servers on UNIX sockets, forwarders listen on loopback;
no root needed. Namespace tests with real interfaces are in test_netns.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from services.bus.pb import vnet_pb2 as pb
from services.forwarder import framing
from services.forwarder.capture import run_client
from services.forwarder.config import GuestSpec
from services.forwarder.daemon import Forwarder
from tests.forwarder.shell_helpers import (
    FakeQemu,
    eth,
    free_port,
    link_up,
    settings,
    wait_until,
)

MA, MB, MP = "02:00:00:00:0a:01", "02:00:00:00:0b:01", "02:00:00:00:0f:01"
BCAST = "ff:ff:ff:ff:ff:ff"


@dataclass
class Net:
    proxy: Forwarder
    a: Forwarder
    b: Forwarder
    qa: FakeQemu
    qb: FakeQemu
    qp: FakeQemu
    ports: dict[str, int]


def _guest(gid: str, mac: str, path: Path) -> GuestSpec:
    return GuestSpec(id=gid, mac=mac, kind="qemu", target=f"unix:{path}")


@contextlib.asynccontextmanager
async def network(tmp_path: Path, **kw: object) -> AsyncIterator[Net]:
    qemus = {n: FakeQemu(tmp_path / f"{n}.sock") for n in ("a", "b", "p")}
    for q in qemus.values():
        await q.start()
    ports = {n: free_port() for n in ("p", "a", "b")}
    members = frozenset({"p", "a", "b"})
    def cap(host: str) -> str:
        return str(tmp_path / f"{host}-capture.sock")

    proxy = Forwarder(settings("p", ports["p"], [_guest("gp", MP, qemus["p"].path)], None,
                               members=members, capture_socket=cap("p"), **kw))
    a = Forwarder(settings("a", ports["a"], [_guest("ga", MA, qemus["a"].path)], ports["p"],
                           members=members, capture_socket=cap("a"), **kw))
    b = Forwarder(settings("b", ports["b"], [_guest("gb", MB, qemus["b"].path)], ports["p"],
                           members=members, capture_socket=cap("b"), **kw))
    fwds = [proxy, a, b]
    try:
        for f in fwds:
            await f.start()
        for q in qemus.values():
            await asyncio.wait_for(q.connected.wait(), 5)
        await wait_until(lambda: link_up(a, "star-a") and link_up(b, "star-b"), 5, "star up")
        yield Net(proxy, a, b, qemus["a"], qemus["b"], qemus["p"], ports)
    finally:
        for f in fwds:
            await f.stop()
        for q in qemus.values():
            await q.close()


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    async with network(tmp_path) as n:
        yield n


async def test_unicast_crosses_the_star_both_ways(net: Net) -> None:
    frame = eth(MB, MA, b"hello-b" + bytes(50))
    net.qa.send(frame)
    assert await net.qb.expect(lambda f: f == frame) == frame
    back = eth(MA, MB, b"hello-a" + bytes(50))
    net.qb.send(back)
    await net.qa.expect(lambda f: f == back)
    assert net.a.links["star-a"].stats.tx_frames >= 1
    assert net.proxy.links["star-b"].stats.tx_frames >= 1
    assert net.a.core.pairs.totals()[(MA, MB)] == (1, len(frame))


async def test_broadcast_reaches_every_guest_once_with_a_fast_path(net: Net) -> None:
    for fwd, peer in ((net.a, "b"), (net.b, "a")):
        fwd.apply(pb.DesiredState(host=fwd.s.host, generation=1, links=[
            pb.LinkSpec(id="a-b", peer_host=peer,
                        peer_address=f"127.0.0.1:{net.ports[peer]}",
                        transport=pb.TRANSPORT_TCP, fast_path=True)]))
    await wait_until(lambda: link_up(net.a, "a-b") and link_up(net.b, "a-b"), 5, "fast path up")
    frame = eth(BCAST, MA, b"bcast" + bytes(50))
    net.qa.send(frame)
    marker = eth(BCAST, MA, b"end" + bytes(50), ethertype=0x88B6)
    net.qa.send(marker)
    for q in (net.qb, net.qp):
        got = []
        while True:
            f = await q.expect(lambda f: f[12:14] in (b"\x88\xb5", b"\x88\xb6"))
            if f == marker:
                break
            got.append(f)
        assert got == [frame]
    assert net.a.links["a-b"].stats.tx_frames == 0, "broadcast on a fast-path link"
    assert net.b.links["a-b"].stats.tx_frames == 0, "broadcast on a fast-path link"
    assert net.qa.received.empty(), "broadcast came back to its sender"


async def test_fast_path_pushed_as_desired_state_changes_the_path(net: Net) -> None:
    for f, peer, dst in ((net.a, "b", MB), (net.b, "a", MA)):
        ops = f.apply(pb.DesiredState(
            host=f.s.host, generation=3,
            links=[pb.LinkSpec(id="a-b", peer_host=peer,
                               peer_address=f"127.0.0.1:{net.ports[peer]}",
                               transport=pb.TRANSPORT_UDP, fast_path=True)],
            rules=[pb.Rule(dst_mac=dst, link_id="a-b"), pb.Rule(dst_mac=MP, link_id="nope")]))
        assert ops is not None and ops.rejected[0][0] == "rule_unknown_link"
        assert f.counters["rule_unknown_link"] == 1
    await wait_until(lambda: link_up(net.a, "a-b") and link_up(net.b, "a-b"), 5, "UDP link up")
    star_before = net.proxy.links["star-a"].stats.rx_frames
    for i in range(5):
        frame = eth(MB, MA, f"fast{i}".encode() + bytes(50))
        net.qa.send(frame)
        await net.qb.expect(lambda f, fr=frame: f == fr)  # type: ignore[misc]
    assert net.a.links["a-b"].stats.tx_frames == 5
    assert net.b.links["a-b"].stats.rx_frames == 5
    assert net.proxy.links["star-a"].stats.rx_frames == star_before
    # An older generation is refused; the held one stays.
    assert net.a.apply(pb.DesiredState(host="a", generation=2)) is None
    assert net.a.counters["desired_stale"] == 1 and net.a.generation == 3
    # Removing the fast path falls back to the star without losing the rule set's intent.
    net.a.apply(pb.DesiredState(host="a", generation=4))
    frame = eth(MB, MA, b"via-star" + bytes(50))
    net.qa.send(frame)
    await net.qb.expect(lambda f: f == frame)
    assert "a-b" not in net.a.links
    await wait_until(lambda: net.a.links["star-a"].stats.rtt_ms > 0, 5, "star RTT")


async def test_star_link_reconnects_after_the_proxy_restarts(tmp_path: Path) -> None:
    async with network(tmp_path) as n:
        await n.proxy.stop()
        await wait_until(lambda: not link_up(n.a, "star-a"), 5, "star down")
        proxy2 = Forwarder(n.proxy.s)
        await proxy2.start()
        try:
            await wait_until(lambda: link_up(n.a, "star-a") and link_up(n.b, "star-b"), 10,
                             "star back")
            assert n.a.links["star-a"].reconnects >= 1
            frame = eth(MB, MA, b"again" + bytes(50))
            n.qa.send(frame)
            await n.qb.expect(lambda f: f == frame)
        finally:
            await proxy2.stop()


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s


def _read_msg(s: socket.socket) -> tuple[int, bytes]:
    head = b""
    while len(head) < 5:
        chunk = s.recv(5 - len(head))
        if not chunk:
            raise ConnectionError("closed")
        head += chunk
    (n,) = struct.unpack("!I", head[:4])
    body = b""
    while len(body) < n - 1:
        body += s.recv(n - 1 - len(body))
    return head[4], body


async def test_non_member_and_garbage_are_refused_and_others_keep_working(net: Net) -> None:
    port = net.ports["p"]
    loop = asyncio.get_running_loop()

    def intruder() -> tuple[int, bytes]:
        with _connect(port) as s:
            s.sendall(framing.encode(framing.MsgType.HELLO,
                                     framing.Hello("mallory", "x", True).encode()))
            return _read_msg(s)

    kind, body = await loop.run_in_executor(None, intruder)
    assert kind == framing.MsgType.REFUSE and b"not in the membership" in body

    def garbage() -> bytes:
        with _connect(port) as s:
            s.sendall(b"\xde\xad\xbe\xef" * 8)
            return s.recv(100)  # closed by the forwarder: b""

    assert await loop.run_in_executor(None, garbage) == b""

    def half_frame_then_stall() -> None:
        with _connect(port) as s:
            s.sendall(framing.encode(framing.MsgType.HELLO,
                                     framing.Hello("a", "stall", True).encode()))
            assert _read_msg(s)[0] == framing.MsgType.WELCOME
            s.sendall(framing.frame_header(1000) + b"x" * 100)
            s.settimeout(5)
            while s.recv(4096):
                pass  # pings until the forwarder times the link out and closes

    await loop.run_in_executor(None, half_frame_then_stall)

    def silent() -> bytes:
        with _connect(port) as s:
            s.settimeout(5)
            while chunk := s.recv(100):
                if chunk.startswith(b"\x00\x00"):
                    return chunk  # the REFUSE naming the timeout
            return b""

    assert b"no handshake" in await loop.run_in_executor(None, silent)
    c = net.proxy.counters
    assert c["link_refused"] == 1 and c["link_bad_length"] == 1 and c["link_timeout"] >= 1
    assert c["link_hello_timeout"] == 1
    frame = eth(MB, MA, b"still" + bytes(50))
    net.qa.send(frame)
    await net.qb.expect(lambda f: f == frame)


async def test_qemu_runts_oversize_and_garbage_are_counted(net: Net) -> None:
    net.qa.send(b"\x01" * 10)  # runt
    net.qa.send(eth(MB, MA, bytes(3000)))  # oversized for MTU 1500
    good = eth(MB, MA, b"ok" + bytes(50))
    net.qa.send(good)
    await net.qb.expect(lambda f: f == good)
    assert net.a.counters["runt"] == 1 and net.a.counters["oversized"] == 1
    net.qa.send_raw(b"\xff\xff\xff\xff")  # length beyond any frame: desynchronised
    await wait_until(lambda: net.a.counters["qemu_bad_length"] == 1, 5, "garbage counted")
    # The attachment reconnects and traffic flows again.
    net.qa.connected.clear()
    await asyncio.wait_for(net.qa.connected.wait(), 5)
    await wait_until(lambda: net.a.attachments["ga"].connected, 5, "qemu reconnected")  # type: ignore[attr-defined]
    again = eth(MB, MA, b"ok2" + bytes(50))
    net.qa.send(again)
    await net.qb.expect(lambda f: f == again)


async def test_tls_star_link(tmp_path: Path) -> None:
    cert = tmp_path / "vnet.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=vnet", "-keyout", str(cert), "-out", str(cert)],
        check=True, capture_output=True,
    )
    async with network(tmp_path, tls_cert=str(cert), proxy_transport="tls") as n:
        assert n.a.links["star-a"].spec.transport == pb.TRANSPORT_TLS
        assert n.proxy.links["star-a"].spec.transport == pb.TRANSPORT_TLS
        frame = eth(MB, MA, b"secret" + bytes(50))
        n.qa.send(frame)
        await n.qb.expect(lambda f: f == frame)


async def test_udp_star_link(tmp_path: Path) -> None:
    async with network(tmp_path, proxy_transport="udp") as n:
        assert n.proxy.links["star-a"].spec.transport == pb.TRANSPORT_UDP
        frame = eth(MB, MA, b"datagram" + bytes(50))
        n.qa.send(frame)
        await n.qb.expect(lambda f: f == frame)
        await wait_until(lambda: n.a.links["star-a"].stats.rtt_ms > 0, 5, "UDP keepalive RTT")
        # Garbage datagrams are counted and dropped.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"\x63junk", ("127.0.0.1", n.ports["p"]))
            s.sendto(b"\x06" + bytes(30), ("127.0.0.1", n.ports["p"]))
        await wait_until(lambda: n.proxy.counters["udp_bad_type"] == 1
                         and n.proxy.counters["udp_unknown_peer"] == 1, 5, "garbage counted")
        n.qb.send(frame[6:12] + frame[0:6] + frame[12:])
        await n.qa.expect(lambda f: f[0:6] == frame[6:12])


async def test_udp_link_carries_frames_larger_than_a_datagram(tmp_path: Path) -> None:
    """A jumbo frame crosses a UDP star link in FRAGMENT pieces (UDP_SEGMENT / UDP_GRO)."""
    async with network(tmp_path, proxy_transport="udp", mtu=65_500) as n:
        # 8 KB frames, and one whose pieces and headers pass 64 KB (one UDP_SEGMENT
        # call cannot carry it: it goes piece by piece).
        frames = [eth(MB, MA, bytes([i]) * 8_000) for i in range(4)]
        frames.append(eth(MB, MA, bytes(65_500)))
        for f in frames:
            n.qa.send(f)
        got = [await n.qb.expect(lambda f: len(f) > 1500) for _ in frames]
        assert got == frames
        assert n.a.links["star-a"].stats.tx_frames >= len(frames)
        assert n.proxy.counters["udp_fragments_lost"] == 0
        assert n.proxy.counters["udp_bad_fragment"] == 0


async def test_rule_change_mid_stream_loses_no_frame(net: Net) -> None:
    def desired(fwd: Forwarder, peer: str, dst: str, gen: int, rule: bool) -> pb.DesiredState:
        return pb.DesiredState(
            host=fwd.s.host, generation=gen,
            links=[pb.LinkSpec(id="a-b", peer_host=peer,
                               peer_address=f"127.0.0.1:{net.ports[peer]}",
                               transport=pb.TRANSPORT_TCP, fast_path=True)],
            rules=[pb.Rule(dst_mac=dst, link_id="a-b")] if rule else [])

    net.a.apply(desired(net.a, "b", MB, 1, rule=False))
    net.b.apply(desired(net.b, "a", MA, 1, rule=False))
    await wait_until(lambda: link_up(net.a, "a-b") and link_up(net.b, "a-b"), 5, "fast path up")
    frames = [eth(MB, MA, i.to_bytes(4, "big") + bytes(50)) for i in range(400)]
    for f in frames[:200]:
        net.qa.send(f)
    await wait_until(lambda: net.a.core.pairs.totals().get((MA, MB), (0, 0))[0] >= 100, 5,
                     "half the stream routed")
    net.a.apply(desired(net.a, "b", MB, 2, rule=True))  # switch while frames are in flight
    for f in frames[200:]:
        net.qa.send(f)
    got = [await net.qb.expect(lambda f: f[12:14] == b"\x88\xb5") for _ in frames]
    assert sorted(got) == sorted(frames)
    assert net.a.links["a-b"].stats.tx_frames > 0 and net.a.links["star-a"].stats.tx_frames > 0


async def test_capture_writes_a_pcap_of_a_guest_and_a_link(net: Net, tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    sock = net.a.s.capture_socket
    guest_pcap, link_pcap = tmp_path / "ga.pcap", tmp_path / "star.pcap"
    jobs = [loop.run_in_executor(None, run_client, sock, "ga", str(guest_pcap), 3, 10.0),
            loop.run_in_executor(None, run_client, sock, "star-a", str(link_pcap), 3, 10.0)]
    await wait_until(lambda: len(net.a._captures) == 2, 5, "captures registered")
    # A slow start of the capture threads can starve the loop past the keepalive
    # deadline on a busy machine; the star reconnects by itself: wait for it.
    await wait_until(lambda: link_up(net.a, "star-a") and link_up(net.proxy, "star-a"), 10,
                     "star up")
    frames = [eth(MB, MA, bytes([i]) * 60) for i in range(3)]
    for f in frames:
        net.qa.send(f)
    assert await asyncio.gather(*jobs) == [3, 3]
    for pcap in (guest_pcap, link_pcap):
        got = [bytes(p) for p in rdpcap(str(pcap))]
        assert got == frames
        assert Ether(got[0]).src == MA
    with pytest.raises(ValueError, match="no port 'nope'"):
        await loop.run_in_executor(None, run_client, sock, "nope", str(tmp_path / "x"), 1, 5.0)
    await wait_until(lambda: not net.a._captures, 5, "captures gone")


async def test_a_guest_moves_between_forwarders_on_a_standby_attachment(
        net: Net, tmp_path: Path) -> None:
    """The QEMU migration's data-plane steps: standby at b, live on its first frame,
    announced to the proxy, released at a; bad commands change nothing."""
    dest = FakeQemu(tmp_path / "a-at-b.sock")
    await dest.start()
    try:
        moved = pb.Guest(id="ga", mac=MA, kind=pb.ATTACHMENT_QEMU_STREAM,
                         attachment=f"unix:{dest.path}", standby=True)
        net.b.guest_command(pb.GuestCommand(host="b", command_id="c1", op=pb.GUEST_OP_ATTACH,
                                            guest=moved))
        await asyncio.wait_for(dest.connected.wait(), 5)
        state = net.b.state()
        assert [g.id for g in state.waiting] == ["ga"] and "ga" not in {g.id for g in
                                                                         state.guests}
        # On standby, it gets nothing: frames for ga still reach the source.
        to_a = eth(MA, MP, b"before" + bytes(50))
        net.qp.send(to_a)
        await net.qa.expect(lambda f: f == to_a)
        # The destination's first frame from the guest (QEMU's announce) makes it live.
        dest.send(eth(BCAST, MA, b"rarp" + bytes(50), ethertype=0x8035))
        await wait_until(lambda: "ga" in {g.id for g in net.b.state().guests}, 5, "ga live at b")
        assert net.a.detach_guest("ga")
        await wait_until(lambda: mac_bytes(MA) in net.proxy.core.port("star-b").peer_macs
                         and mac_bytes(MA) not in net.proxy.core.port("star-a").peer_macs,
                         5, "the proxy to hear both announcements")
        to_b = eth(MA, MP, b"after" + bytes(50))
        net.qp.send(to_b)
        await dest.expect(lambda f: f == to_b)
        assert not net.a.detach_guest("ga")  # idempotent: already gone
        # Bad commands: counted, nothing changes.
        bad = [
            pb.Guest(id="gx", mac=MB, kind=pb.ATTACHMENT_QEMU_STREAM, attachment="unix:/x"),
            pb.Guest(id="gy", mac="02:00:00:00:0c:01", kind=pb.ATTACHMENT_TAP, attachment="t"),
            pb.Guest(id="gz", mac="02:00:00:00:0c:02", kind=pb.ATTACHMENT_QEMU_STREAM,
                     attachment="/no/scheme"),
        ]
        for i, g in enumerate(bad):
            net.b.guest_command(pb.GuestCommand(host="b", command_id=f"bad{i}",
                                                op=pb.GUEST_OP_ATTACH, guest=g))
        assert net.b.counters["guest_mac_conflict"] == 1
        assert net.b.counters["guest_command_bad"] == 2
        assert sorted(net.b.guest_specs) == ["ga", "gb"]
    finally:
        await dest.close()


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _congestion_of(sock: socket.socket) -> str:
    name: bytes = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    return name.split(b"\0")[0].decode()


def _congestion(fwd: Forwarder, link_id: str) -> str:
    conn = fwd.links[link_id].conn
    assert conn is not None and conn.transport is not None
    return _congestion_of(conn.transport.get_extra_info("socket"))


def _kernel_default_congestion() -> str:
    with socket.socket() as s:
        return _congestion_of(s)


async def test_tcp_links_use_the_configured_congestion_control(tmp_path: Path) -> None:
    """reno (always built in) on both ends of the star links, whatever the kernel's default."""
    async with network(tmp_path, link_congestion="reno") as n:
        assert _congestion(n.a, "star-a") == "reno"
        assert _congestion(n.proxy, "star-a") == "reno"
        frame = eth(MB, MA, b"reno" + bytes(50))
        n.qa.send(frame)
        await n.qb.expect(lambda f: f == frame)


async def test_an_unknown_congestion_control_is_counted_and_links_still_work(
        tmp_path: Path) -> None:
    async with network(tmp_path, link_congestion="no-such-cc") as n:
        assert n.a.counters["link_congestion_refused"] >= 1
        assert n.proxy.counters["link_congestion_refused"] >= 1
        assert _congestion(n.a, "star-a") == _kernel_default_congestion()
        frame = eth(MB, MA, b"default" + bytes(50))
        n.qa.send(frame)
        await n.qb.expect(lambda f: f == frame)
