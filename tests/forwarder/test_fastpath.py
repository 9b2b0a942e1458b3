"""The compiled fast path against the Python path it stands in for.

Real sockets (socketpairs, a loopback TCP connection); the Python code in
core.py and links.py is the reference: whatever the fast path carries must
come out and be counted exactly as Python would, and whatever it cannot
decide must reach Python untouched and in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvloop

from services.forwarder import fastpath, framing
from services.forwarder.core import ForwarderCore
from services.forwarder.ethernet import MAX_GSO_FRAME, VNET_HDR_LEN
from services.forwarder.links import StreamConn
from services.forwarder.linkstate import LinkStats

pytestmark = pytest.mark.skipif(fastpath.compiled is None, reason="_fastpath is not built")

A, B, C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
MAX_FRAME = 1518


def vframe(dst: str, src: str, payload: bytes = b"x" * 50, gso: int = 0) -> bytes:
    eth = bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", "")) + b"\x08\x00"
    return bytes([0, gso]) + bytes(8) + eth + payload


class Bench:
    """A core with guests a and b (ports 0, 1), each writing into a socketpair."""

    def __init__(self) -> None:
        self.core = ForwarderCore("h1", is_proxy=True)
        self.a = self.core.add_guest("a", A)
        self.b = self.core.add_guest("b", B)
        self.pairs = {g: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for g in "ab"}
        for ours, _ in self.pairs.values():
            ours.setblocking(False)
        self.switch = fastpath.compiled.Switch()
        self.sync()

    def sync(self, enabled: bool = True, sinks: tuple[Any, ...] | None = None) -> None:
        if sinks is None:
            sinks = tuple(fastpath.compiled.Sink(self.pairs[g][0].fileno()) for g in "ab")
        self.switch.configure(self.core.route_cache(), self.core.pairs.pairs,
                              self.core.counters, sinks, fastpath.port_flags(self.core),
                              MAX_FRAME + VNET_HDR_LEN, MAX_GSO_FRAME + VNET_HDR_LEN, enabled)

    def received(self, guest: str) -> list[bytes]:
        theirs = self.pairs[guest][1]
        theirs.setblocking(False)
        out = []
        while True:
            try:
                out.append(theirs.recv(70_000))
            except BlockingIOError:
                return out

    def close(self) -> None:
        for x, y in self.pairs.values():
            x.close()
            y.close()


@pytest.fixture
def bench() -> Iterator[Bench]:
    b = Bench()
    yield b
    b.close()


def test_a_cached_counted_frame_goes_fast_and_is_counted_as_python_would(bench: Bench) -> None:
    vf = vframe(B, A)
    assert not bench.switch.frame(bench.a, vf)  # a cache miss: Python's
    assert bench.core.route(bench.a, vf) == (bench.b,)  # Python fills the cache and the pair
    before = dict(bench.core.counters), bench.core.pairs.totals()
    for _ in range(3):
        assert bench.switch.frame(bench.a, vf)
    assert bench.received("b") == [vf] * 3
    assert bench.core.counters["frames_in"] == before[0]["frames_in"] + 3
    assert bench.core.pairs.totals()[(A, B)] == (4, 4 * (len(vf) - VNET_HDR_LEN))
    assert bench.switch.fast_frames == 3


@pytest.mark.parametrize("case", ["broadcast", "runt", "oversized", "hairpin", "down",
                                  "disabled", "no_sink", "new_pair", "segment"])
def test_what_the_fast_path_cannot_decide_is_left_untouched(bench: Bench, case: str) -> None:
    vf = vframe(B, A)
    bench.core.route(bench.a, vf)
    ingress = bench.a
    if case == "broadcast":
        vf = vframe("ff:ff:ff:ff:ff:ff", A)
        bench.core.route(bench.a, vf)
    elif case == "runt":
        vf = vf[:VNET_HDR_LEN + 13]
    elif case == "oversized":
        vf = vframe(B, A, b"x" * 1600)
    elif case == "hairpin":
        bench.core.route_cache()[vf[10:22]] = bench.a
    elif case == "down":
        bench.core.set_port_up("a", False)
        bench.sync()
    elif case == "disabled":
        bench.sync(enabled=False)
    elif case == "no_sink":
        bench.sync(sinks=(None, None))
    elif case == "new_pair":
        vf = vframe(B, C)
        bench.core.route_cache()[vf[10:22]] = bench.b
    elif case == "segment":
        bench.core.ports[bench.a].segment = bench.core.ports[bench.b].segment = "veth0"  # type: ignore[union-attr]
        bench.core.set_rules([])  # rebuild
        bench.core.route(bench.a, vf)
        bench.sync()
    counters, pairs = dict(bench.core.counters), bench.core.pairs.totals()
    assert not bench.switch.frame(ingress, vf)
    assert bench.received("b") == []
    assert (dict(bench.core.counters), bench.core.pairs.totals()) == (counters, pairs)
    assert bench.switch.fast_frames == 0


def test_a_gso_frame_over_the_mtu_goes_fast(bench: Bench) -> None:
    vf = vframe(B, A, b"y" * 30_000, gso=1)
    bench.core.route(bench.a, vf)
    assert bench.switch.frame(bench.a, vf)
    assert bench.received("b") == [vf]


def test_a_full_guest_socket_hands_the_frame_back(bench: Bench) -> None:
    vf = vframe(B, A, b"z" * 1400)
    bench.core.route(bench.a, vf)
    bench.pairs["b"][0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    results = [bench.switch.frame(bench.a, vf) for _ in range(2000)]
    assert True in results and False in results  # full: left to Python (which counts a drop)
    assert bench.switch.fast_frames == results.count(True) == len(bench.received("b"))
    assert bench.core.counters["frames_in"] == 1 + results.count(True)


def test_the_guest_reader_keeps_order_after_the_first_frame_it_hands_back(bench: Bench) -> None:
    """Frames 1-2 fast; frame 3 is a new pair, so 3, 4 and 5 all go to Python, in order."""
    known, new = vframe(B, A), vframe(B, C)
    bench.core.route(bench.a, known)
    handed: list[list[bytes]] = []
    errors: list[str] = []
    reader = fastpath.compiled.GuestReader(
        bench.pairs["a"][0].fileno(), bench.a, bench.switch, handed.append,
        lambda: errors.append("read"), 70_000, 64)
    theirs = bench.pairs["a"][1]
    batch = [known, known, new, known, known]
    for vf in batch:
        theirs.send(vf)
    reader.readable()
    assert bench.received("b") == [known, known]
    assert handed == [[new, known, known]]
    assert errors == []


def test_the_guest_reader_hands_a_read_error_to_python(bench: Bench) -> None:
    """A read that fails, not with "try again" (EISDIR here), is the Python reader's."""
    called: list[str] = []
    fd = os.open("/", os.O_RDONLY)
    try:
        reader = fastpath.compiled.GuestReader(fd, bench.a, bench.switch,
                                               lambda f: called.append("frames"),
                                               lambda: called.append("error"), 70_000, 64)
        reader.readable()
    finally:
        os.close(fd)
    assert called == ["error"]


# ---------------------------------------------------------------- links


class Owner:
    """The LinkOwner side: records what the connection hands up."""

    def __init__(self) -> None:
        self.got: list[tuple[str, Any]] = []
        self._clock = 123.0

    def on_stream_message(self, conn: StreamConn, kind: int, body: bytes) -> None:
        self.got.append(("msg", (kind, bytes(body))))

    def on_stream_frames(self, conn: StreamConn, bodies: list[bytes]) -> None:
        self.got.append(("frames", [bytes(b) for b in bodies]))

    def on_stream_error(self, conn: StreamConn, reason: str, detail: str) -> None:
        self.got.append(("error", (reason, detail)))

    def on_stream_lost(self, conn: StreamConn) -> None:
        pass

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        pass

    def on_fragments(self, batch: memoryview, size: int, addr: tuple[str, int]) -> None:
        pass


class FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("10.0.0.1", 1) if name == "peername" else None


def feed(conn: StreamConn, stream: bytes, cuts: list[int]) -> None:
    pos = 0
    for cut in [*cuts, len(stream)]:
        while pos < cut:
            view = conn.get_buffer(-1)
            n = min(len(view), cut - pos)
            view[:n] = stream[pos:pos + n]
            view.release()
            conn.buffer_updated(n)
            if conn.transport is None:
                return
            pos += n


def random_stream(rng: random.Random) -> bytes:
    out = b""
    for _ in range(rng.randrange(1, 30)):
        roll = rng.random()
        if roll < 0.6:
            body = vframe(B, A, rng.randbytes(rng.randrange(0, 3000)))
            out += framing.frame_header(len(body)) + body
        elif roll < 0.9:
            out += framing.encode(framing.MsgType.PING, rng.randbytes(16))
        elif roll < 0.95:
            out += struct.pack("!IB", rng.choice([0, framing.MAX_LINK_MESSAGE + 1]), 6)
        elif roll < 0.98:
            out += struct.pack("!IB", 5, 99) + b"abcd"
        else:
            out += struct.pack("!IB", framing.MAX_CONTROL_BODY + 1, 4)
    return out


@pytest.mark.parametrize("seed", range(40))
async def test_the_c_receive_half_hands_up_what_python_does(seed: int) -> None:
    """Without go_fast, FastStreamConn must equal StreamConn message for message."""
    rng = random.Random(seed)
    stream = random_stream(rng)
    cuts = sorted(rng.randrange(len(stream)) for _ in range(rng.randrange(0, 8)))
    results = []
    for cls in (StreamConn, fastpath.FastStreamConn):
        owner = Owner()
        conn = cls(owner, dialer=True)
        conn.connection_made(FakeTransport())  # type: ignore[arg-type]
        feed(conn, stream, cuts)
        results.append((owner.got, conn.pending if conn.transport is not None else None))
    assert results[0] == results[1]


async def test_link_frames_go_fast_once_the_link_is_bound(bench: Bench) -> None:
    """A link port: FRAMEs for guest b go straight out; a PING still reaches Python."""
    link_port = bench.core.add_link("l1", star=False, up=True)
    bench.sync(sinks=(fastpath.compiled.Sink(bench.pairs["a"][0].fileno()),
                      fastpath.compiled.Sink(bench.pairs["b"][0].fileno()), None))
    vf = vframe(B, C)
    bench.core.route(link_port, vf)  # not counted: a link's frames are the sender's to count
    owner = Owner()
    conn = fastpath.FastStreamConn(owner, dialer=True)
    conn.connection_made(FakeTransport())  # type: ignore[arg-type]
    stats = LinkStats(keepalive_s=0.5)
    conn.go_fast(bench.switch, link_port, stats, owner)
    ping = framing.encode(framing.MsgType.PING, bytes(16))
    msg = framing.frame_header(len(vf)) + vf
    feed(conn, msg * 2 + ping + msg, [])
    assert bench.received("b") == [vf, vf]
    assert owner.got == [("msg", (int(framing.MsgType.PING), bytes(16))), ("frames", [vf])]
    assert (stats.rx_frames, stats.rx_bytes, stats.last_rx) == (2, 2 * (len(vf) - 10), 123.0)
    conn.go_fast()
    owner.got.clear()
    feed(conn, msg, [])
    assert owner.got == [("frames", [vf])] and bench.received("b") == []


class Peer(asyncio.Protocol):
    """The far end of a loopback link: keeps what arrives, notes the end."""

    def __init__(self) -> None:
        self.got = bytearray()
        self.arrived = asyncio.Event()
        self.transport: asyncio.Transport | None = None
        self.ended = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got.extend(data)
        self.arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(None)

    async def wait_for(self, size: int) -> None:
        while len(self.got) < size:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 10)


class LostOwner(Owner):
    def __init__(self) -> None:
        super().__init__()
        self.lost = asyncio.get_running_loop().create_future()

    def on_stream_lost(self, conn: StreamConn) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


@contextlib.asynccontextmanager
async def loopback_link(owner: Owner) -> AsyncIterator[tuple[Peer, asyncio.Transport,
                                                             fastpath.FastStreamConn]]:
    """A FastStreamConn dialled to a Peer on loopback, closed at the end."""
    loop = asyncio.get_running_loop()
    peers: list[Peer] = []
    server = await loop.create_server(lambda: peers.append(Peer()) or peers[-1],
                                      "127.0.0.1", 0)
    transport: asyncio.Transport | None = None
    try:
        port = server.sockets[0].getsockname()[1]
        transport, conn = await loop.create_connection(
            lambda: fastpath.FastStreamConn(owner, dialer=True), "127.0.0.1", port)
        while not peers or peers[0].transport is None:
            await asyncio.sleep(0.01)
        yield peers[0], transport, conn
    finally:
        if transport is not None:
            transport.close()
        server.close()
        await server.wait_closed()


@pytest.fixture(params=[uvloop.new_event_loop, None], ids=["uvloop", "asyncio"])
def runner(request: pytest.FixtureRequest) -> Iterator[asyncio.Runner]:
    """The forwarder's loop (uvloop) and asyncio's own, for what depends on the loop."""
    with asyncio.Runner(loop_factory=request.param) as r:
        yield r


def test_a_tcp_link_sink_writes_framed_messages_in_order(bench: Bench,
                                                          runner: asyncio.Runner) -> None:
    """Into a real loopback connection, through the connection's own fd while it reads in
    C; with bytes handed to the transport, Python's turn until they are gone."""
    runner.run(_sink_writes_in_order(bench))


async def _sink_writes_in_order(bench: Bench) -> None:
    owner = Owner()
    async with loopback_link(owner) as (peer, transport, conn):
        link_port = bench.core.add_link("l1", star=False, up=True)
        stats = LinkStats(keepalive_s=0.5)
        bench.sync(sinks=(None, None, fastpath.compiled.Sink(-1, transport, stats, conn)))
        vf = vframe(C, A)
        bench.core.route_cache()[vf[10:22]] = link_port
        bench.core.route(bench.a, vf)  # makes the pair
        assert conn.read_fd == -1 and not bench.switch.frame(bench.a, vf)  # not fast yet
        conn.go_fast(bench.switch, link_port, stats, owner)
        assert conn.read_fd >= 0
        assert bench.switch.frame(bench.a, vf)
        assert (stats.tx_frames, stats.tx_bytes) == (1, len(vf) - 10)
        big = b"q" * (8 << 20)
        conn.write(big)  # the kernel takes part; the transport queues the rest
        assert conn.queued == 1
        if transport.get_write_buffer_size():
            assert not bench.switch.frame(bench.a, vf)  # around the queue would reorder
        message = framing.frame_header(len(vf)) + vf
        await peer.wait_for(len(message) + len(big))
        while transport.get_write_buffer_size():
            await asyncio.sleep(0.01)
        assert bench.switch.frame(bench.a, vf) and conn.queued == 0  # drained: fast again
        await peer.wait_for(2 * len(message) + len(big))
        assert bytes(peer.got) == message + big + message
        conn.close()
        assert conn.read_fd == -1 and not bench.switch.frame(bench.a, vf)
        await asyncio.wait_for(peer.ended, 10)  # our duplicate fd did not hold it open


def test_a_fast_link_is_read_in_c_and_its_end_reaches_python(bench: Bench,
                                                            runner: asyncio.Runner) -> None:
    """FRAMEs from the peer reach guest b, a PING reaches Python, in order; when the peer
    closes, reading goes back to the transport, which reports the loss."""
    runner.run(_link_read_in_c(bench))


async def _link_read_in_c(bench: Bench) -> None:
    owner = LostOwner()
    async with loopback_link(owner) as (peer, _, conn):
        link_port = bench.core.add_link("l1", star=False, up=True)
        bench.sync(sinks=(fastpath.compiled.Sink(bench.pairs["a"][0].fileno()),
                          fastpath.compiled.Sink(bench.pairs["b"][0].fileno()), None))
        vf = vframe(B, C)
        bench.core.route(link_port, vf)
        stats = LinkStats(keepalive_s=0.5)
        conn.go_fast(bench.switch, link_port, stats, owner)
        assert conn.read_fd >= 0
        message = framing.frame_header(len(vf)) + vf
        ping = framing.encode(framing.MsgType.PING, bytes(16))
        assert peer.transport is not None
        peer.transport.write(message * 3 + ping + message)
        deadline = asyncio.get_running_loop().time() + 10
        got: list[bytes] = []
        while len(got) < 3 or not owner.got:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
            got += bench.received("b")
        assert got == [vf, vf, vf]
        assert owner.got == [("msg", (int(framing.MsgType.PING), bytes(16))),
                             ("frames", [vf])]
        assert (stats.rx_frames, stats.rx_bytes) == (3, 3 * (len(vf) - 10))
        peer.transport.close()
        await asyncio.wait_for(owner.lost, 10)
        assert conn.read_fd == -1 and conn.transport is None

