"""The inference service's I/O shell: one asyncio loop around the core.

Reads frame counts and forwarder state from the bus, hands them to the core
with the local monotonic clock, runs the core's pipeline at the update rate
and publishes what it returns. Heartbeats carry the core's counters (pairs
dropped, intervals lost, forwarder restarts ...). Stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import time

from services.bus import log as buslog
from services.bus import topics
from services.bus.client import BusClient
from services.bus.settings import BusSettings
from services.inference.core import InferenceCore
from services.inference.params import InferenceParams


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
        try:
            while not stop.is_set():
                batch = await client.recv_batch(max(0.0, next_tick - time.monotonic()))
                now = time.monotonic()
                for msg in batch:
                    for error in core.handle(msg, now):
                        log.error("bus input dropped", topic=msg.topic, source=msg.source,
                                  error=error)
                if now < next_tick:
                    continue
                for out in core.tick(now):
                    client.publish(out.topic, out.payload)
                    if out.topic == topics.TOPOLOGY_CHANGE:
                        log.info("topology change", change_id=core.change_id,
                                 shape=core.latest.shape if core.latest else "",
                                 edges=len(core.latest.edges) if core.latest else 0)
                next_tick += period
                if next_tick < now:
                    core.counters.inc("updates_late")
                    next_tick = now + period
        finally:
            beats.cancel()
    log.info("inference stopped", **core.counters.snapshot())
    return core
