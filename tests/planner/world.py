"""Bus messages of a small world: a proxy p, hosts h1 and h2, four guests."""

from __future__ import annotations

from services.bus.pb import vnet_pb2 as pb

MACS = {"a": "02:00:00:00:00:0a", "b": "02:00:00:00:00:0b",
        "c": "02:00:00:00:00:0c", "d": "02:00:00:00:00:0d"}


def state(host: str, guests: list[str], generation: int = 0, star_up: bool = True,
          is_proxy: bool = False) -> pb.ForwarderState:
    links = []
    if not is_proxy:
        links.append(pb.LinkStatus(spec=pb.LinkSpec(id=f"star-{host}", peer_host="p",
                                                    transport=pb.TRANSPORT_TCP),
                                   up=star_up))
    return pb.ForwarderState(
        host=host, is_proxy=is_proxy, generation=generation,
        listen_address=f"127.0.0.1:{7800 + len(host)}", links=links,
        guests=[pb.Guest(id=g, mac=MACS[g]) for g in guests],
    )


def states() -> list[pb.ForwarderState]:
    """a and c on h1, b and d on h2: a-b and c-d talk across."""
    return [state("p", [], is_proxy=True), state("h1", ["a", "c"], generation=3),
            state("h2", ["b", "d"], generation=5)]


def links(host: str, rtt_ms: float = 0.5) -> pb.LinkMeasurements:
    return pb.LinkMeasurements(host=host, interval_s=1.0, links=[pb.LinkMeasurement(
        link_id=f"star-{host}", peer_host="p", up=True, rtt_ms=rtt_ms, tx_bps=1e6,
        rx_bps=1e6)])


def change(change_id: int = 1, rate: float = 5e7) -> pb.TopologyChange:
    return pb.TopologyChange(
        change_id=change_id, nodes=["a", "b", "c", "d"],
        edges=[pb.Edge(src="a", dst="b", weight=1.0, bytes_per_s=rate),
               pb.Edge(src="c", dst="d", weight=0.5, bytes_per_s=rate / 2)],
    )
