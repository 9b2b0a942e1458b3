"""The inference service's I/O shell: one asyncio loop around the core.

Reads frame counts and forwarder state from the bus, stamps each with the
local monotonic clock, hands everything received since the last update to
the core in one batch, runs the core's pipeline at the update rate and
publishes what it returns (including the periodic repeat of the latest
topology change). Heartbeats carry the core's counters (pairs
dropped, intervals lost, forwarder restarts ...). Stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import time

from services.bus import log as buslog
from services.bus import topics
from services.bus.client import BusClient
from services.bus.envelope import BusMessage
from services.bus.pb import vnet_pb2 as pb
from services.bus.settings import BusSettings
from services.inference.core import InferenceCore
from services.inference.params import InferenceParams

# Messages held for the next update at most: past this they are taken at
# once (memory stays bounded when forwarders outpace a slow update rate).
MAX_PENDING = 10_000


async def serve(
    settings: BusSettings, params: InferenceParams, host: str,
    stop: asyncio.Event | None = None,
) -> InferenceCore:
    """Run until stop is set (or SIGTERM/SIGINT when stop is None)."""
    log = buslog.get()
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    core = InferenceCore(params, settings.max_message_bytes)
    period = params.update_period_s
    with BusClient(settings, "inference", host) as client:
        client.subscribe(topics.FRAMES + ".")
        client.subscribe(topics.STATE + ".")
        await client.ready()
        log.info("inference on the bus", source=client.source, params=str(params))
        beats = asyncio.create_task(client.heartbeats(core.counters.snapshot))
        next_tick = time.monotonic()
        pending: list[tuple[BusMessage, float]] = []  # received since the last update
        reported = 0  # change_id last logged (repeats are not logged again)
        try:
            while not stop.is_set():
                batch = await client.recv_batch(max(0.0, next_tick - time.monotonic()))
                now = time.monotonic()
                pending += ((msg, now) for msg in batch)
                if now < next_tick and len(pending) < MAX_PENDING:
                    continue
                # Everything since the last update in one go: one run of
                # counts costs a few numpy calls, not a few per message.
                for msg, error in core.handle_batch(pending):
                    log.error("bus input dropped", topic=msg.topic, source=msg.source,
                              error=error)
                pending.clear()
                if now < next_tick:
                    continue  # MAX_PENDING reached early: taken, the update stays on time
                for out in core.tick(now):
                    client.publish(out.topic, out.payload)
                    if isinstance(out.payload, pb.TopologyChange) and (
                            out.payload.change_id != reported):
                        reported = out.payload.change_id
                        log.info("topology change", change_id=reported,
                                 shape=out.payload.shape, edges=len(out.payload.edges))
                next_tick += period
                if next_tick < now:
                    core.counters.inc("updates_late")
                    next_tick = now + period
        finally:
            beats.cancel()
    log.info("inference stopped", **core.counters.snapshot())
    return core
