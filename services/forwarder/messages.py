"""Build the forwarder's bus messages from its core state (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from services.bus.pb import vnet_pb2 as pb
from services.forwarder.linkstate import LinkStats


@dataclass(frozen=True)
class LinkView:
    """What the publisher needs to know about one link."""

    spec: pb.LinkSpec
    up: bool
    up_since: float
    reconnects: int
    stats: LinkStats


def link_measurements(
    host: str, interval_s: float, links: Iterable[LinkView], now: float
) -> pb.LinkMeasurements:
    out = pb.LinkMeasurements(host=host, interval_s=interval_s)
    for view in sorted(links, key=lambda v: v.spec.id):
        tx_bps, rx_bps = view.stats.rates(now)
        out.links.append(
            pb.LinkMeasurement(
                link_id=view.spec.id,
                peer_host=view.spec.peer_host,
                transport=view.spec.transport,
                up=view.up,
                rtt_ms=view.stats.rtt_ms,
                tx_bps=tx_bps,
                rx_bps=rx_bps,
                tx_frames=view.stats.tx_frames,
                rx_frames=view.stats.rx_frames,
                drops=view.stats.drops,
                loss=view.stats.loss,
            )
        )
    return out


def forwarder_state(
    *,
    host: str,
    is_proxy: bool,
    generation: int,
    listen_address: str,
    links: Iterable[LinkView],
    rules: Iterable[pb.Rule],
    guests: list[pb.Guest],
    waiting: list[pb.Guest] | None = None,
    cpu: pb.HostCpu | None = None,
) -> pb.ForwarderState:
    ordered: list[pb.Guest] = sorted(guests, key=lambda g: str(g.id))
    held: list[pb.Guest] = sorted(waiting or [], key=lambda g: str(g.id))
    return pb.ForwarderState(
        host=host,
        is_proxy=is_proxy,
        generation=generation,
        listen_address=listen_address,
        links=[
            pb.LinkStatus(spec=v.spec, up=v.up, up_since=v.up_since, reconnects=v.reconnects)
            for v in sorted(links, key=lambda v: v.spec.id)
        ],
        rules=list(rules),
        guests=ordered,
        waiting=held,
        cpu=cpu,
    )
