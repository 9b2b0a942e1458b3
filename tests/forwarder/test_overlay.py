"""Overlay description files: parsing, per-host desired states, diffs (pure)."""

from __future__ import annotations

import pytest

from services.bus.pb import vnet_pb2 as pb
from services.forwarder import overlay

DESC = {
    "generation": 4,
    "host": [{"name": "h1", "address": "10.0.0.1:7000"},
             {"name": "h2", "address": "10.0.0.2:7000"}],
    "guest": [{"name": "g1", "host": "h1", "mac": "02:00:00:00:00:01"},
              {"name": "g2", "host": "h2", "mac": "02:00:00:00:00:02"}],
    "link": [{"id": "h1-h2", "hosts": ["h1", "h2"], "transport": "udp"}],
    "rule": [{"host": "h1", "dst": "g2", "link": "h1-h2"},
             {"host": "h2", "dst": "g1", "link": "h1-h2"},
             {"host": "h2", "src": "02:00:00:00:00:99", "drop": True}],
}


def test_description_becomes_one_desired_state_per_host() -> None:
    o = overlay.parse(DESC)
    assert o.generation == 4
    h1 = o.desired["h1"]
    assert [(s.id, s.peer_host, s.peer_address, s.transport) for s in h1.links] == [
        ("h1-h2", "h2", "10.0.0.2:7000", pb.TRANSPORT_UDP)]
    assert h1.rules[0].dst_mac == "02:00:00:00:00:02" and h1.rules[0].link_id == "h1-h2"
    assert o.desired["h2"].rules[1].drop


@pytest.mark.parametrize(("change", "message"), [
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"guest": [{"name": "g", "host": "h9", "mac": "02:00:00:00:00:01"}]}, "'h9' is not declared"),
    ({"rule": [{"host": "h1", "dst": "g2", "link": "nope"}]}, "unknown link 'nope'"),
    ({"rule": [{"host": "h1", "dst": "zz", "drop": True}]}, "neither a guest name nor a MAC"),
    ({"link": [{"id": "x", "hosts": ["h1", "h1"]}]}, "two different host names"),
    ({"link": [{"id": "x", "hosts": ["h1", "h2"], "transport": "sctp"}]}, "transport 'sctp'"),
])
def test_bad_descriptions_name_the_problem(change: dict[str, object], message: str) -> None:
    with pytest.raises(overlay.OverlayError, match=message):
        overlay.parse({**DESC, **change})


def test_diff_against_what_runs() -> None:
    o = overlay.parse(DESC)
    st = pb.ForwarderState(host="h1", generation=3)
    st.links.append(pb.LinkStatus(spec=pb.LinkSpec(id="star-h1", fast_path=False), up=True))
    st.links.append(pb.LinkStatus(spec=pb.LinkSpec(id="old", peer_host="h2", fast_path=True,
                                                   transport=pb.TRANSPORT_TCP)))
    lines = overlay.diff(st, o.desired["h1"])
    assert lines[0].startswith("- link old") and lines[1].startswith("+ link h1-h2")
    assert lines[2] == "+ rule dst=02:00:00:00:00:02 src=* -> link h1-h2"
    assert not any("star-h1" in line for line in lines)
    st.guests.append(pb.Guest(id="g1", mac="02:00:00:00:00:01"))
    assert overlay.placement_problems(o, {"h1": st}) == []
    assert overlay.placement_problems(o, {"h2": pb.ForwarderState(host="h2")}) == [
        "guest g2 (02:00:00:00:00:02) is not attached on h2"]
