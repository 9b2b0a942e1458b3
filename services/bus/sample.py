"""A minimal service: joins the bus and sends heartbeats, nothing else.

It is what `make demo` shows before the real services exist, and the
smallest example of a service's shape (settings, loop, clean stop).
"""

from __future__ import annotations

import asyncio
import signal

from services.bus import log as buslog
from services.bus.client import BusClient
from services.bus.settings import BusSettings


async def serve(settings: BusSettings, name: str, host: str) -> None:
    log = buslog.get()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with BusClient(settings, name, host) as client:
        await client.ready()
        log.info("sample service on the bus", source=client.source)
        beats = asyncio.create_task(client.heartbeats())
        await stop.wait()
        beats.cancel()
    log.info("sample service stopped")
