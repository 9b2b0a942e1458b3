"""The publish loop keeps its rate on the forwarder's default loop (uvloop).

uvloop's timers count whole milliseconds against a clock cached per loop
iteration, so a timer may fire a little before loop.time() says it is due;
a loop that slept again for the remainder woke ~740 times a second at 20 Hz.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop

from services.forwarder.config import ForwarderSettings
from services.forwarder.daemon import Forwarder


class RecordingBus:
    def __init__(self) -> None:
        self.topics: list[str] = []

    def publish(self, topic: str, msg: Any) -> None:
        self.topics.append(topic)

    def publish_wire(self, topic: str, field: str, body: bytes) -> None:
        self.topics.append(topic)


@pytest.mark.parametrize("loop_factory", [uvloop.new_event_loop, None], ids=["uvloop", "asyncio"])
def test_the_publish_loop_sleeps_once_per_publish(loop_factory: Any) -> None:
    bus = RecordingBus()
    sleeps = 0

    async def main() -> None:
        nonlocal sleeps
        fwd = Forwarder(ForwarderSettings(host="p", listen="127.0.0.1:0", is_proxy=True,
                                          update_rate_hz=20, state_interval_s=0.25),
                        bus=bus)  # type: ignore[arg-type]
        sleep = fwd._sleep_unless_state

        async def counted(wait_s: float) -> None:
            nonlocal sleeps
            sleeps += 1
            await sleep(wait_s)

        fwd._sleep_unless_state = counted  # type: ignore[method-assign]
        task = asyncio.get_running_loop().create_task(fwd._publish_loop())
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    frames = sum(t.startswith("frames.") for t in bus.topics)
    states = sum(t.startswith("state.") for t in bus.topics)
    assert 15 <= frames <= 25, bus.topics  # 20 Hz for a second
    assert 3 <= states <= 6
    assert sleeps <= frames + states + 2, f"{sleeps} sleeps for {frames} + {states} publishes"
