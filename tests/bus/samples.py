"""One filled-in example of every bus payload, keyed by Envelope field."""

from __future__ import annotations

from google.protobuf.message import Message

from services.bus.pb import vnet_pb2 as pb

LINK = pb.LinkSpec(id="h1-h2", peer_host="h2", peer_address="10.9.0.2:7800",
                   transport=pb.TRANSPORT_TCP, fast_path=True)
RULE = pb.Rule(dst_mac="02:00:00:00:00:02", src_mac="02:00:00:00:00:01", link_id="h1-h2")
PARAMS = pb.InferenceParams(update_rate_hz=1, smoothing_window_s=5, prune_fraction=0.1,
                            detection_threshold=0.2, damping_s=10)
DESIRED = pb.DesiredState(host="h1", generation=7, links=[LINK], rules=[RULE])

SAMPLES: dict[str, tuple[str, Message]] = {
    "heartbeat": ("heartbeat.test.t", pb.Heartbeat(
        service="test", host="t", uptime_s=1.5, interval_s=1, version="0.1.0",
        counters={"sent": 3})),
    "probe": ("_probe.x", pb.Probe(nonce="abc")),
    "frame_counts": ("frames.h1", pb.FrameCounts(
        host="h1", interval_index=4, interval_s=1.0,
        pairs=[pb.PairCount(src_mac="02:00:00:00:00:01", dst_mac="02:00:00:00:00:02",
                            frames=10, bytes=15000, total_frames=40, total_bytes=60000)])),
    "link_measurements": ("links.h1", pb.LinkMeasurements(
        host="h1", interval_s=1.0,
        links=[pb.LinkMeasurement(link_id="h1-h2", peer_host="h2", transport=pb.TRANSPORT_UDP,
                                  up=True, rtt_ms=0.3, tx_bps=1e6, rx_bps=2e6, tx_frames=5,
                                  rx_frames=6, drops=1, loss=0.01)])),
    "forwarder_state": ("state.h1", pb.ForwarderState(
        host="h1", is_proxy=False, generation=7, listen_address="10.9.0.1:7800",
        links=[pb.LinkStatus(spec=LINK, up=True, up_since=1.0, reconnects=2)], rules=[RULE],
        guests=[pb.Guest(id="g1", mac="02:00:00:00:00:01", ip="10.77.0.1",
                         kind=pb.ATTACHMENT_TAP, attachment="tap0")])),
    "desired_state": ("desired.h1", DESIRED),
    "traffic_matrix": ("traffic.matrix", pb.TrafficMatrix(
        nodes=["g1", "g2"], values=[0, 5, 7, 0], params=PARAMS)),
    "topology_change": ("topology.change", pb.TopologyChange(
        change_id=3, nodes=["g1", "g2"],
        edges=[pb.Edge(src="g1", dst="g2", weight=1.0, bytes_per_s=5)], params=PARAMS,
        shape="bus/line", distance=0.4)),
    "plan": ("plan", pb.Plan(
        plan_id=2, planner="greedy", based_on_change=3,
        placement=[pb.Placement(guest_id="g1", host="h1")], links_add=[LINK],
        links_remove=[], desired=[DESIRED],
        migrations=[pb.Migration(migration_id="m1", guest_id="g2", from_host="h3",
                                 to_host="h2", est_gain=1e6, est_cost_s=2.5)],
        explanation="g1-g2 carry 90% of the traffic")),
    "migration_status": ("migration.done", pb.MigrationStatus(
        migration_id="m1", guest_id="g2", from_host="h3", to_host="h2",
        phase=pb.MIGRATION_PHASE_DONE, backend="netns", progress=1.0, total_s=2.1,
        downtime_s=0.05, bytes_moved=93_000_000)),
    "migration_request": ("control.migrate", pb.MigrationRequest(
        migration_id="m1", guest_id="g2", to_host="h2", requested_by="operator")),
    "app_report": ("app.patterns.g1", pb.AppReport(
        app="patterns", guest="g1", rank=0, iterations=10, iterations_per_s=5.0,
        bytes_sent=1000, interval_s=1.0, topology="ring", workers=4)),
    "guest_command": ("control.guest.h2", pb.GuestCommand(
        host="h2", command_id="m1-attach", op=pb.GUEST_OP_ATTACH,
        guest=pb.Guest(id="g2", mac="02:00:00:00:00:02", kind=pb.ATTACHMENT_PACKET,
                       attachment="g-g2"))),
}
