"""The Patterns core without sockets: schedules, progress, the wire parser, the meter,
and the launcher's arguments read back by the CLI."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import replace

import pytest

from services.bus import envelope, topics
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings
from services.cli.main import parser
from services.workloads import report, topologies, wire
from services.workloads.cli import _params
from services.workloads.launch import Workload, worker_args
from services.workloads.patterns import PatternsParams, Progress, ProtocolError, Step, schedule


def fits(topology: str, n: int) -> bool:
    try:
        topologies.check(topology, n)
    except ValueError:
        return False
    return True


RUNS = [(t, n) for t in topologies.TOPOLOGIES for n in (4, 7, 8, 12) if fits(t, n)]


def simulate(topology: str, n: int, iterations: int, seed: int) -> list[Progress]:
    """Every worker's core over an in-memory network: each connection delivers in
    order (as TCP does), the connections in a random order.

    Checks at each delivery that the run stays bulk-synchronous: neighbours are
    never more than one iteration apart (in a reduction, nobody is).
    """
    rng = random.Random(seed)
    workers = [Progress(schedule(topology, n, r, 100)) for r in range(n)]
    channels: dict[tuple[int, int], deque[int]] = {}  # (from, to) -> iterations in flight
    edges = topologies.edges(topology, n)
    pairs = edges if topology != topologies.REDUCTION else \
        {(a, b) for a in range(n) for b in range(a + 1, n)}

    def step(r: int) -> None:
        w = workers[r]
        while w.iteration < iterations:
            for to, _ in w.advance():
                channels.setdefault((r, to), deque()).append(w.iteration)
            if not w.complete:
                return
            w.next_iteration()

    for r in range(n):
        step(r)
    while busy := [c for c, q in channels.items() if q]:
        frm, to = rng.choice(busy)
        workers[to].on_message(frm, channels[frm, to].popleft())
        step(to)
        done = [w.iteration for w in workers]
        assert all(abs(done[a] - done[b]) <= 1 for a, b in pairs), done
    return workers


@pytest.mark.parametrize(("topology", "n"), RUNS)
def test_every_worker_completes_every_iteration_whatever_the_delivery_order(
        topology: str, n: int) -> None:
    for seed in range(3):
        workers = simulate(topology, n, 6, seed)
        assert [w.iteration for w in workers] == [6] * n
        for r, w in enumerate(workers):
            assert set(w.received.values()) == {6}, (r, w.received)


def test_exchange_sends_to_every_neighbour_then_waits_for_them() -> None:
    assert schedule("ring", 4, 0, 1000) == (Step((), ((1, 1000), (3, 1000))), Step((1, 3), ()))


def test_reduction_goes_up_to_the_root_and_releases_down() -> None:
    assert schedule("reduction", 7, 0, 50) == (Step((1, 2), ((1, 0), (2, 0))),)
    assert schedule("reduction", 7, 1, 50) == (Step((3, 4), ((0, 50),)),
                                               Step((0,), ((3, 0), (4, 0))))
    assert schedule("reduction", 7, 5, 50) == (Step((), ((2, 50),)), Step((2,), ()))


def test_progress_refuses_messages_out_of_order_or_from_strangers() -> None:
    p = Progress(schedule("ring", 4, 0, 10))
    p.on_message(1, 0)
    p.on_message(1, 1)  # a neighbour may be one iteration ahead
    with pytest.raises(ProtocolError, match="rank 1 sent iteration 5, expected 2"):
        p.on_message(1, 5)
    with pytest.raises(ProtocolError, match="rank 2, which is no neighbour"):
        p.on_message(2, 0)


def test_progress_tells_whom_it_waits_for() -> None:
    p = Progress(schedule("ring", 4, 0, 10))
    assert p.advance() == [(1, 10), (3, 10)]
    assert p.missing() == (1, 3)
    p.on_message(3, 0)
    assert p.advance() == [] and p.missing() == (1,)
    with pytest.raises(RuntimeError, match="not complete"):
        p.next_iteration()
    p.on_message(1, 0)
    assert p.advance() == [] and p.complete
    p.next_iteration()
    assert (p.iteration, p.missing()) == (1, ())


# ---------------------------------------------------------------- the wire


def test_the_parser_finds_messages_however_the_stream_is_cut() -> None:
    stream = b"".join(wire.header(i, size) + bytes(size)
                      for i, size in enumerate((0, 5, 70000, 0, 3)))
    rng = random.Random(1)
    for _ in range(50):
        parser_ = wire.StreamParser()
        got: list[int] = []
        pos = 0
        while pos < len(stream):
            cut = min(len(stream), pos + rng.choice((1, 2, 7, 100, 65536)))
            got += parser_.feed(stream[pos:cut])
            pos = cut
            assert parser_.at_boundary == (pos in _boundaries(stream))
        assert got == [0, 1, 2, 3, 4]


def _boundaries(stream: bytes) -> set[int]:
    out, pos = {0}, 0
    while pos < len(stream):
        _, size = wire.HEADER.unpack_from(stream, pos)
        pos += wire.HEADER.size + size
        out.add(pos)
    return out


def test_hello_names_the_rank_and_refuses_strangers() -> None:
    assert wire.parse_hello(wire.hello(17)) == 17
    with pytest.raises(wire.WireError, match="not a Patterns worker"):
        wire.parse_hello(b"GET / HT")


# ---------------------------------------------------------------- reports


def test_the_meter_reports_once_per_interval_with_the_rate_over_it() -> None:
    template = pb.AppReport(app="patterns", guest="g1", rank=0, topology="ring", workers=4)
    meter = report.Meter(template, 1.0, now=100.0)
    totals = report.Totals(iterations=10, bytes_sent=500, bytes_received=400)
    assert meter.poll(100.5, totals) is None
    assert meter.next_due(100.5) == pytest.approx(0.5)
    got = meter.poll(101.0, totals)
    assert got is not None
    assert (got.guest, got.iterations, got.iterations_per_s, got.interval_s, got.bytes_sent,
            got.bytes_received, got.done) == ("g1", 10, 10.0, 1.0, 500, 400, False)
    totals.iterations = 25
    last = meter.report(103.0, totals, done=True, error="boom")
    assert (last.iterations_per_s, last.interval_s, last.done, last.error) == (
        7.5, 2.0, True, "boom")
    assert template.iterations == 0  # the template stays as it was


def test_reports_travel_on_the_app_topic() -> None:
    msg = pb.AppReport(app="patterns", guest="g3", iterations=5)
    topic = report.topic("patterns", "g3")
    assert topic == "app.patterns.g3" and topics.root_of(topic) == topics.APP
    decoded = envelope.decode(envelope.encode(topic, "patterns@g3", 1, 1, 0.0, msg))
    assert decoded.payload == msg


# ---------------------------------------------------------------- settings


def test_the_launcher_s_arguments_read_back_as_the_same_params() -> None:
    work = Workload(topology="torus", msg_bytes=1234, ops_per_byte=0.5, compute_ops=10,
                    duration_s=2.5, iterations=7, port=7999, report_interval_s=0.25,
                    connect_timeout_s=3.0, drain_timeout_s=1.5)
    peers = tuple(f"10.0.0.{i}" for i in range(1, 9))
    params = work.params(3, peers, "g4")
    bus = BusSettings(pub="ipc:///tmp/x-pub", sub="ipc:///tmp/x-sub")
    args = parser().parse_args(worker_args(params, bus))
    assert _params(args) == params
    assert (args.bus_pub, args.bus_sub, args.no_bus) == (bus.pub, bus.sub, False)
    assert parser().parse_args(worker_args(params, None)).no_bus


def test_params_name_what_is_wrong() -> None:
    ok = PatternsParams(topology="ring", peers=("10.0.0.1", "10.0.0.2", "10.0.0.3"), rank=0)
    ok.check()
    assert ok.guest == "rank0" and ok.endpoints[1] == ("10.0.0.2", 7900)
    cases = [
        (replace(ok, rank=3), "--rank 3 is outside 0..2"),
        (replace(ok, peers=("10.0.0.1", "10.0.0.1:7900", "10.0.0.3")), "repeat an address"),
        (replace(ok, guest="g.1"), "contain no '.'"),
        (replace(ok, compute_s=1.0, compute_ops=5), "not both"),
        (replace(ok, report_interval_s=0), "must be positive"),
        (replace(ok, topology="hypercube"), "power of two"),
    ]
    for params, message in cases:
        with pytest.raises(ValueError, match=message):
            params.check()
    with pytest.raises(ValueError, match="not ip or ip:port"):
        replace(ok, peers=("10.0.0.1:x", "b", "c"))


def test_work_grows_with_the_bytes_sent() -> None:
    peers = tuple(f"10.0.0.{i}" for i in range(1, 5))
    ring = PatternsParams(topology="ring", peers=peers, rank=0, msg_bytes=1000,
                          compute_ops=7, ops_per_byte=0.5)
    assert ring.work_ops() == 7 + 1000  # two neighbours, 1000 bytes each, half an op a byte
    leaf = replace(ring, topology="reduction", rank=3)
    assert leaf.work_ops() == 7 + 500
