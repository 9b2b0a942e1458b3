"""Pure core: Ethernet checks, forwarding table, flooding, counting, messages."""

from __future__ import annotations

import contextlib
import random

import pytest

from services.bus.paircols import frame_counts_wire, rows_of
from services.bus.pb import vnet_pb2 as pb
from services.forwarder import desired, ethernet, framing, messages
from services.forwarder.core import NO_ROUTE, CompiledRule, ForwarderCore, PortKind
from services.forwarder.counting import PairCounter
from services.forwarder.ethernet import mac_from_str
from services.forwarder.linkstate import Backoff, LinkStats

G1, G2, G3, G4 = (f"02:00:00:00:00:0{i}" for i in range(1, 5))
BCAST = "ff:ff:ff:ff:ff:ff"
MCAST = "01:00:5e:00:00:01"


def vframe(dst: str, src: str, payload: bytes = b"x" * 46) -> bytes:
    return ethernet.ZERO_VNET_HDR + mac_from_str(dst) + mac_from_str(src) + b"\x08\x00" + payload


def spoke(host: str = "h1") -> ForwarderCore:
    core = ForwarderCore(host, is_proxy=False, star_link_id="star")
    core.add_guest("g1", G1)
    core.add_guest("g2", G2)
    core.add_link("star", star=True, up=True)
    core.add_link("fast", star=False, up=True)
    return core


def names(core: ForwarderCore, ports: tuple[int, ...]) -> list[str]:
    out = []
    for i in ports:
        port = core.ports[i]
        assert port is not None
        out.append(port.name)
    return sorted(out)


# ------------------------------------------------------------ ethernet


def test_check_vframe_rejects_runts_and_oversized_with_reason() -> None:
    assert ethernet.check_vframe(b"", 1518) == "runt"
    assert ethernet.check_vframe(ethernet.ZERO_VNET_HDR + b"\0" * 13, 1518) == "runt"
    assert ethernet.check_vframe(ethernet.ZERO_VNET_HDR + b"\0" * 14, 1518) is None
    assert ethernet.check_vframe(ethernet.ZERO_VNET_HDR + b"\0" * 1519, 1518) == "oversized"
    gso = bytes([0, 1]) + bytes(8) + b"\0" * 60000
    assert ethernet.check_vframe(gso, 1518) is None
    assert ethernet.check_vframe(gso + b"\0" * 10000, 1518) == "oversized"
    assert ethernet.check_frame(b"\0" * 13, 1518) == "runt"
    assert ethernet.check_frame(b"\0" * 1519, 1518) == "oversized"


def test_mac_parsing_names_the_bad_value() -> None:
    assert ethernet.mac_to_str(mac_from_str("02-00-00-00-0A-01")) == "02:00:00:00:0a:01"
    for bad in ("02:00", "zz:00:00:00:00:01", "002:00:00:00:00:01"):
        with pytest.raises(ValueError, match="MAC address"):
            mac_from_str(bad)


def test_to_plain_completes_partial_checksum() -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    pkt = Ether(dst=G2, src=G1) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(dport=80) / (b"a" * 33)
    good = bytes(pkt)
    correct = Ether(good)[TCP].chksum
    # What the kernel hands over with offload: the pseudo-header sum in place.
    partial = bytearray(good)
    ip_hdr = 20
    csum_start = 14 + ip_hdr
    tcp = Ether(good)[TCP]
    tcp.chksum = 0
    zero = bytearray(bytes(Ether(dst=G2, src=G1) / IP(src="10.0.0.1", dst="10.0.0.2") / tcp))
    import struct as _s

    length = len(zero) - csum_start
    pseudo = _s.pack("!4s4sBBH", bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 0, 6, length)
    psum = ethernet._csum(pseudo)
    _s.pack_into("!H", zero, csum_start + 16, psum)
    partial = zero
    hdr = _s.pack("<BBHHHH", 1, 0, 0, 0, csum_start, 16)
    plain = ethernet.to_plain(hdr + bytes(partial))
    assert plain is not None
    assert Ether(plain)[TCP].chksum == correct
    gso = _s.pack("<BBHHHH", 1, 1, 54, 1400, csum_start, 16) + bytes(partial)
    assert ethernet.to_plain(gso) is None


# ------------------------------------------------------------ forwarding table


def test_default_rule_sends_unknown_unicast_to_the_proxy() -> None:
    core = spoke()
    assert names(core, core.route(core.by_name["g1"], vframe(G3, G1))) == ["star"]


def test_local_guest_is_delivered_locally_and_hairpin_dropped() -> None:
    core = spoke()
    assert names(core, core.route(core.by_name["g1"], vframe(G2, G1))) == ["g2"]
    assert core.route(core.by_name["g1"], vframe(G1, G1)) == ()
    assert core.counters["hairpin"] == 1


def test_most_specific_rule_wins() -> None:
    core = spoke()
    core.add_link("other", star=False, up=True)
    core.set_rules([
        CompiledRule(dst=mac_from_str(G3), src=b"", link_id="fast"),
        CompiledRule(dst=mac_from_str(G3), src=mac_from_str(G2), link_id="other"),
        CompiledRule(dst=b"", src=mac_from_str(G1), drop=True),
    ])
    g1, g2 = core.by_name["g1"], core.by_name["g2"]
    assert names(core, core.route(g2, vframe(G3, G2))) == ["other"]  # dst+src
    assert names(core, core.route(g1, vframe(G3, G1))) == ["fast"]   # dst beats src
    assert core.route(g1, vframe(G4, G1)) == ()                       # src rule: drop
    assert core.counters["rule_drop"] == 1
    assert names(core, core.route(g2, vframe(G4, G2))) == ["star"]   # default


def test_rule_to_a_down_link_falls_back_to_the_star() -> None:
    core = spoke()
    core.set_rules([CompiledRule(dst=mac_from_str(G3), src=b"", link_id="fast")])
    g1 = core.by_name["g1"]
    assert names(core, core.route(g1, vframe(G3, G1))) == ["fast"]
    core.set_link_up("fast", False)
    assert names(core, core.route(g1, vframe(G3, G1))) == ["star"]
    core.set_link_up("star", False)
    assert core.route(g1, vframe(G3, G1)) == ()
    assert core.counters["no_route"] == 1


def test_proxy_routes_by_announced_guest_macs_and_has_no_default() -> None:
    proxy = ForwarderCore("p", is_proxy=True)
    proxy.add_guest("gp", G4)
    proxy.add_link("star-h1", star=True)
    proxy.add_link("star-h2", star=True)
    proxy.set_link_up("star-h1", True, [G1])
    proxy.set_link_up("star-h2", True, [G2])
    h1 = proxy.by_name["star-h1"]
    assert names(proxy, proxy.route(h1, vframe(G2, G1))) == ["star-h2"]
    assert names(proxy, proxy.route(h1, vframe(G4, G1))) == ["gp"]
    assert proxy.route(h1, vframe(G3, G1)) == ()
    assert proxy.counters["no_route"] == 1
    assert proxy.resolve(mac_from_str(G3), mac_from_str(G1)) == NO_ROUTE


@pytest.mark.parametrize("dst", [BCAST, MCAST])
def test_broadcast_tree_reaches_every_guest_once_without_loops(dst: str) -> None:
    """Simulate three spokes and a proxy, each with fast-path links to all others."""
    hosts = {"h1": ["a1", "b1"], "h2": ["a2"], "h3": ["a3", "b3"]}
    cores: dict[str, ForwarderCore] = {}
    macs: dict[str, str] = {}
    n = 0
    proxy = ForwarderCore("p", is_proxy=True)
    proxy.add_guest("gp", "02:00:00:00:01:00")
    for h, guests in hosts.items():
        core = ForwarderCore(h, is_proxy=False, star_link_id="star")
        for g in guests:
            n += 1
            macs[g] = f"02:00:00:00:00:{n:02x}"
            core.add_guest(g, macs[g])
        core.add_link("star", star=True, up=True)
        for other in hosts:
            if other != h:
                core.add_link(f"fast-{other}", star=False, up=True)
        cores[h] = core
        proxy.add_link(f"star-{h}", star=True)
        proxy.set_link_up(f"star-{h}", True, [macs[g] for g in guests])
    for h in hosts:
        for other in hosts:
            if other != h:
                proxy.add_link(f"fast-{h}-{other}", star=False, up=True)
    cores["p"] = proxy

    def peer(host: str, link: str) -> tuple[str, str]:
        if host == "p":
            spoke_host = link.removeprefix("star-")
            return spoke_host, "star"
        if link == "star":
            return "p", f"star-{host}"
        other = link.removeprefix("fast-")
        return other, f"fast-{host}"

    for sender_host, guests in [*hosts.items(), ("p", ["gp"])]:
        sender = guests[0]
        received: list[str] = []
        queue = [(sender_host, sender, vframe(dst, macs.get(sender, G1)))]
        hops = 0
        while queue:
            host, ingress, frame = queue.pop()
            hops += 1
            assert hops < 100, "loop"
            core = cores[host]
            for out in core.route(core.by_name[ingress], frame):
                port = core.ports[out]
                assert port is not None
                if port.kind is PortKind.GUEST:
                    received.append(port.name)
                else:
                    assert port.star, "broadcast on a fast-path link"
                    nh, ni = peer(host, port.name)
                    queue.append((nh, ni, frame))
        everyone = sorted([g for gs in hosts.values() for g in gs] + ["gp"])
        assert sorted(received) == sorted(g for g in everyone if g != sender)


# ------------------------------------------------------------ counting


def test_counts_only_frames_from_local_guests_exactly() -> None:
    core = spoke()
    g1, star = core.by_name["g1"], core.by_name["star"]
    for _ in range(7):
        core.route(g1, vframe(G3, G1, b"y" * 100))
    core.route(star, vframe(G1, G3))
    core.route(g1, vframe(BCAST, G1))
    assert core.pairs.totals() == {(G1, G3): (7, 7 * 114), (G1, BCAST): (1, 60)}


def test_pair_counter_cuts_intervals_and_keeps_totals() -> None:
    c = PairCounter()
    key = mac_from_str(G2) + mac_from_str(G1)
    c.add(key, 100)
    c.add(key, 50)
    assert c.cut() == [(G1, G2, 2, 150, 2, 150)]
    assert c.cut() == []
    c.add(key, 10)
    rows = c.cut()
    assert rows == [(G1, G2, 1, 10, 3, 160)]
    msg = pb.FrameCounts.FromString(frame_counts_wire("h1", 3, 0.05, rows))
    assert rows_of(msg) == [(G1, G2, 1, 10, 3, 160)] and msg.interval_index == 3
    assert list(msg.columns.macs) == [G1, G2] and not msg.pairs


def test_pair_counter_is_bounded() -> None:
    c = PairCounter(max_pairs=2)
    for i in range(5):
        c.add(bytes([2, 0, 0, 0, 0, i]) * 2, 60)
    assert len(c.pairs) == 2 and c.overflow_frames == 3


# ------------------------------------------------------------ link state (fake clock)


def test_keepalive_rtt_liveness_and_loss_with_a_fake_clock() -> None:
    s = LinkStats(keepalive_s=1.0, dead_after=3)
    now = 100.0
    seq = s.ping_due(now)
    assert seq == 1 and s.ping_due(now + 0.5) is None
    assert s.on_pong(1, now + 0.002) == pytest.approx(2.0)
    assert s.alive(now + 3.0) and not s.alive(now + 3.1)
    assert s.ping_due(now + 1.0) == 2
    assert s.ping_due(now + 2.0) == 3  # ping 2 never answered
    assert s.loss == pytest.approx(0.5)
    assert s.on_pong(99, now + 2.1) is None
    s.tx_bytes = 1000
    s.rates(10.0)
    s.tx_bytes = 2000
    assert s.rates(11.0) == (8000.0, 0.0)


def test_backoff_doubles_caps_and_resets() -> None:
    b = Backoff(base_s=0.1, cap_s=1.0)
    assert [b.next_delay() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    b.reset()
    assert b.next_delay() == pytest.approx(0.1)


# ------------------------------------------------------------ desired state


def _link(i: str, peer: str, t: pb.Transport = pb.TRANSPORT_TCP) -> pb.LinkSpec:
    return pb.LinkSpec(id=i, peer_host=peer, peer_address="10.0.0.2:7000", transport=t,
                       fast_path=True)


def _plan(d: pb.DesiredState, gen: int = 0, links: dict[str, pb.LinkSpec] | None = None,
          rules: list[pb.Rule] | None = None) -> desired.Operations:
    return desired.plan(host="h1", generation=gen, links=links or {}, rules=rules or [],
                        desired=d, guests={"g1"}, fixed_links={"star"},
                        members=frozenset({"h1", "h2", "h3"}))


def test_desired_state_diff_and_rejections() -> None:
    d = pb.DesiredState(host="h1", generation=5, links=[_link("h1-h2", "h2"), _link("x", "h9")])
    d.rules.append(pb.Rule(dst_mac=G3, link_id="h1-h2"))
    d.rules.append(pb.Rule(dst_mac=G4, link_id="nope"))
    d.rules.append(pb.Rule(dst_mac=G2, guest_id="g1"))
    d.rules.append(pb.Rule(dst_mac="bad", drop=True))
    d.rules.append(pb.Rule(src_mac=G1, link_id="star"))
    ops = _plan(d)
    assert [s.id for s in ops.add_links] == ["h1-h2"]
    assert len(ops.rules) == 3 and ops.rules_changed
    reasons = sorted(r for r, _ in ops.rejected)
    assert reasons == ["link_rejected", "rule_rejected", "rule_unknown_link"]
    assert any("unknown link 'nope'" in detail for _, detail in ops.rejected)
    # Same state again: nothing to do.
    again = _plan(d, gen=5, links={"h1-h2": _link("h1-h2", "h2")}, rules=list(ops.rule_messages))
    assert again.empty
    # Changed transport: replace; dropped link: remove.
    d2 = pb.DesiredState(host="h1", generation=6,
                         links=[_link("h1-h2", "h2", pb.TRANSPORT_UDP)])
    ops2 = _plan(d2, gen=5, links={"h1-h2": _link("h1-h2", "h2"), "h1-h3": _link("h1-h3", "h3")})
    assert [s.id for s in ops2.replace_links] == ["h1-h2"] and ops2.remove_links == ("h1-h3",)


def test_desired_state_refuses_older_generation_and_wrong_host() -> None:
    with pytest.raises(desired.Refused) as exc:
        _plan(pb.DesiredState(host="h1", generation=3), gen=4)
    assert exc.value.reason == "desired_stale"
    with pytest.raises(desired.Refused) as exc:
        _plan(pb.DesiredState(host="h2", generation=9))
    assert exc.value.reason == "desired_wrong_host"


def test_forwarder_state_message() -> None:
    view = messages.LinkView(spec=_link("h1-h2", "h2"), up=True, up_since=1.0, reconnects=2,
                             stats=LinkStats())
    st = messages.forwarder_state(host="h1", is_proxy=False, generation=4,
                                  listen_address="10.0.0.1:7000", links=[view],
                                  rules=[pb.Rule(dst_mac=G3, drop=True)],
                                  guests=[pb.Guest(id="g1", mac=G1)])
    assert st.generation == 4 and st.links[0].reconnects == 2 and st.guests[0].id == "g1"
    lm = messages.link_measurements("h1", 1.0, [view], now=5.0)
    assert lm.links[0].link_id == "h1-h2" and lm.links[0].up


# ------------------------------------------------------------ framing + fuzz


def test_stream_decoder_splits_and_keeps_partials() -> None:
    data = framing.encode(framing.MsgType.PING, framing.ping_body(1, 2.5))
    data += framing.frame_header(30) + b"f" * 30
    dec = framing.StreamDecoder()
    assert dec.feed(data[:7]) == [] and dec.pending == 7
    out = dec.feed(data[7:])
    assert [k for k, _ in out] == [framing.MsgType.PING, framing.MsgType.FRAME]
    assert framing.parse_ping(out[0][1]) == (1, 2.5) and out[1][1] == b"f" * 30
    assert dec.pending == 0


def test_stream_decoder_rejects_garbage() -> None:
    with pytest.raises(framing.BadStream) as exc:
        framing.StreamDecoder().feed(b"\xff\xff\xff\xff\x06")
    assert exc.value.reason == "bad_length"
    with pytest.raises(framing.BadStream) as exc:
        framing.StreamDecoder().feed(b"\x00\x00\x00\x02\x63x")
    assert exc.value.reason == "bad_type"


def test_hello_round_trip_and_bad_hello() -> None:
    h = framing.Hello("h1", "star-h1", False, (G1, G2))
    assert framing.Hello.decode(h.encode()) == h
    for bad in (b"\xff", b"vnet1\nh1", b"vnet0\nh\nl\n0\n", b"vnet1\n\nl\n0\n"):
        with pytest.raises(framing.BadStream):
            framing.Hello.decode(bad)


def test_fuzz_parsers_never_fail_other_than_by_their_errors() -> None:
    rng = random.Random(1234)
    for _ in range(3000):
        n = rng.choice([0, 1, 5, 13, 14, 24, 60, 1500, 2000])
        data = bytes(rng.getrandbits(8) for _ in range(n))
        ethernet.check_vframe(data, 1518)
        ethernet.check_frame(data, 1518)
        if ethernet.check_vframe(data, 70000) is None:
            ethernet.to_plain(data)
            core = spoke()
            core.route(0, data)
        for dec in (framing.StreamDecoder(), framing.QemuDecoder(1518)):
            try:
                dec.feed(data[: n // 2])
                dec.feed(data[n // 2 :])
            except framing.BadStream:
                pass
        with contextlib.suppress(framing.BadStream):
            framing.decode_datagram(data)
        with contextlib.suppress(framing.BadStream):
            framing.Hello.decode(data)
        with contextlib.suppress(framing.BadStream):
            framing.parse_ping(data)


def test_counting_off_counts_nothing_but_still_routes() -> None:
    core = ForwarderCore("h1", is_proxy=False, star_link_id="star", counting=False)
    g1 = core.add_guest("g1", G1)
    core.add_link("star", star=True, up=True)
    assert names(core, core.route(g1, vframe(G3, G1))) == ["star"]
    assert core.pairs.totals() == {}


def test_guest_options_and_members_parse_or_name_the_problem(tmp_path: object) -> None:
    from pathlib import Path

    from services.forwarder.config import ForwarderSettings, GuestSpec, parse_members

    g = GuestSpec.parse("id=g1,mac=02-00-00-00-00-0A,tap=t-g1,netns=ns1")
    assert (g.kind, g.target, g.netns, g.mac) == ("tap", "t-g1", "ns1", "02:00:00:00:00:0a")
    assert GuestSpec.parse("id=q,mac=02:00:00:00:00:01,qemu=unix:/x.sock").kind == "qemu"
    for bad, msg in (("id=g1", "needs id= and mac="), ("id=g,mac=02:00:00:00:00:01", "exactly one"),
                     ("id=g,mac=02:00:00:00:00:01,qemu=/x", "unix:/path"),
                     ("id=g,mac=zz,iface=e", "MAC address"), ("id=g,colour=red", "unknown")):
        with pytest.raises(ValueError, match=msg):
            GuestSpec.parse(bad)
    assert parse_members("h1, h2,") == frozenset({"h1", "h2"})
    f = Path(str(tmp_path)) / "members"
    f.write_text("h1\n# comment\nh3 # the third\n")
    assert parse_members(str(f)) == frozenset({"h1", "h3"})
    with pytest.raises(ValueError, match="needs --proxy-address"):
        ForwarderSettings(host="h1", listen="1.2.3.4:1").check()
    with pytest.raises(ValueError, match="not in members"):
        ForwarderSettings(host="h9", listen="1.2.3.4:1", is_proxy=True,
                          members=frozenset({"h1"})).check()


# ---------------------------------------------------------------- guests that move


def test_a_rule_sending_a_local_guests_mac_away_is_stale_and_the_guest_wins() -> None:
    core = spoke()
    core.set_rules([CompiledRule(dst=mac_from_str(G1), src=b"", link_id="fast")])
    assert names(core, core.route(core.by_name["g2"], vframe(G1, G2))) == ["g1"]


def test_a_down_guest_port_gets_no_frames_and_no_floods() -> None:
    core = spoke()
    core.set_port_up("g1", False)
    assert names(core, core.route(core.by_name["g2"], vframe(BCAST, G2))) == ["star"]
    # Not here any more: towards the proxy, like any unknown MAC.
    assert names(core, core.route(core.by_name["g2"], vframe(G1, G2))) == ["star"]


def test_the_proxy_follows_an_announcement_over_a_stale_rule() -> None:
    core = ForwarderCore("proxy", is_proxy=True)
    core.add_guest("g4", G4)
    core.add_link("star-h1", star=True)
    core.add_link("star-h2", star=True)
    core.add_link("fast-h1", star=False)
    core.set_link_up("star-h1", True, [G1], peer_host="h1")
    core.set_link_up("star-h2", True, [G2], peer_host="h2")
    core.set_link_up("fast-h1", True, peer_host="h1")
    core.set_rules([CompiledRule(dst=mac_from_str(G1), src=b"", link_id="fast-h1")])
    ingress = core.by_name["g4"]
    assert names(core, core.route(ingress, vframe(G1, G4))) == ["fast-h1"]  # a fine route
    # g1 moves from h1 to h2: both spokes announce their new sets.
    core.set_peer_macs("star-h1", [])
    core.set_peer_macs("star-h2", [G2, G1])
    assert names(core, core.route(ingress, vframe(G1, G4))) == ["star-h2"]


def test_announcements_parse_and_garbage_is_refused() -> None:
    body = framing.announce_body((G1, G2))
    assert framing.parse_announce(body) == (G1, G2)
    assert framing.parse_announce(b"") == ()
    for bad in (b"\xff\xfe", b"02:00:00:00:00", b"zz:00:00:00:00:01"):
        with pytest.raises(framing.BadStream):
            framing.parse_announce(bad)


def test_guests_sharing_a_segment_reach_each_other_through_it_not_the_forwarder() -> None:
    core = ForwarderCore("h1", is_proxy=False, star_link_id="star")
    core.add_guest("g1", G1, segment="eth1")
    core.add_guest("g2", G2, segment="eth1")
    core.add_guest("g3", G3, segment="eth2")
    core.add_link("star", star=True, up=True)
    g1 = core.by_name["g1"]
    assert core.route(g1, vframe(G2, G1)) == ()  # the bridge on eth1 delivered it
    assert core.counters["same_segment"] == 1
    assert names(core, core.route(g1, vframe(G3, G1))) == ["g3"]
    assert names(core, core.route(g1, vframe(BCAST, G1))) == ["g3", "star"]


def test_the_source_filter_is_classic_bpf_on_the_source_mac() -> None:
    import struct

    from services.forwarder.attach import source_filter

    prog = [struct.unpack("HBBI", source_filter(G1)[i:i + 8]) for i in range(0, 48, 8)]
    assert prog[0] == (0x20, 0, 0, 6) and prog[1][3] == 0x02000000
    assert prog[2] == (0x28, 0, 0, 10) and prog[3][3] == 0x0001
    assert prog[4][3] > 0 and prog[5][3] == 0
