"""`vnet tail`: follow the bus, readable by default or one JSON object a line."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from google.protobuf.json_format import MessageToDict

from services.bus.client import BusClient
from services.bus.envelope import BusMessage


def as_json(msg: BusMessage) -> str:
    """DESIGN.md's stable form: topic, source, seq, ts, body (protobuf JSON)."""
    return json.dumps(
        {
            "topic": msg.topic,
            "source": msg.source,
            "seq": msg.seq,
            "ts": msg.ts,
            "body": MessageToDict(msg.payload),
        },
        separators=(",", ":"),
    )


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _short(value: Any, width: int = 60) -> str:
    value = _rounded(value)
    text = json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 1] + "…"


def as_text(msg: BusMessage) -> str:
    stamp = datetime.fromtimestamp(msg.ts, tz=UTC).strftime("%H:%M:%S.%f")[:-3]
    body = MessageToDict(msg.payload)
    fields = " ".join(f"{k}={_short(v)}" for k, v in body.items())
    return f"{stamp} {msg.topic:<28} {msg.source:<22} #{msg.seq:<6} {fields}"


def matches_source(msg: BusMessage, patterns: Sequence[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(msg.source, p) for p in patterns)


async def follow(
    client: BusClient,
    prefixes: Sequence[str],
    sources: Sequence[str],
    out: TextIO,
    render: Callable[[BusMessage], str],
    count: int | None = None,
    duration_s: float | None = None,
) -> int:
    """Print matching messages until count or duration is reached; returns printed."""
    for prefix in prefixes or [""]:
        client.subscribe(prefix)
    printed = 0
    deadline = None if duration_s is None else time.monotonic() + duration_s
    while count is None or printed < count:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        for msg in await client.recv_batch(timeout=left if left is not None else 1.0):
            if not matches_source(msg, sources):
                continue
            out.write(render(msg) + "\n")
            printed += 1
            if count is not None and printed >= count:
                break
        out.flush()
    return printed


@dataclass(frozen=True)
class TopicRate:
    """How many messages of one topic arrived in one window."""

    ts: float  # wall clock at the window's end
    topic: str
    count: int
    interval_s: float

    @property
    def rate_hz(self) -> float:
        return self.count / self.interval_s if self.interval_s > 0 else 0.0

    def as_json(self) -> str:
        return json.dumps({"ts": round(self.ts, 3), "topic": self.topic, "count": self.count,
                           "interval_s": round(self.interval_s, 4),
                           "rate_hz": round(self.rate_hz, 2)}, separators=(",", ":"))

    def as_text(self) -> str:
        stamp = datetime.fromtimestamp(self.ts, tz=UTC).strftime("%H:%M:%S")
        return (f"{stamp} {self.topic:<28} {self.rate_hz:8.1f}/s"
                f"  ({self.count} in {self.interval_s:.2f}s)")


async def follow_rates(
    client: BusClient,
    prefixes: Sequence[str],
    sources: Sequence[str],
    out: TextIO,
    render: Callable[[TopicRate], str],
    every_s: float = 1.0,
    duration_s: float | None = None,
) -> int:
    """Print each topic's message rate every every_s seconds; returns the messages counted.

    Whether publishers keep their rate, at little cost to the machine: no
    message is rendered, and the socket is drained on a timer (ZeroMQ
    queues up to the HWM meanwhile) rather than woken for every message,
    which at 20 Hz from a few forwarders cost this process more CPU than
    the publishers spent sending. A topic seen once is printed in every
    later window, at 0/s if it went quiet.
    """
    for prefix in prefixes or [""]:
        client.subscribe(prefix)
    loop = asyncio.get_running_loop()
    window = loop.time()
    end = None if duration_s is None else window + duration_s
    counts: dict[str, int] = {}
    total = 0
    while True:
        while batch := client.drain():
            for msg in batch:
                if matches_source(msg, sources):
                    counts[msg.topic] = counts.get(msg.topic, 0) + 1
                    total += 1
        now = loop.time()
        last = end is not None and now >= end
        if now >= window + every_s or last:
            wall = time.time()
            for topic in sorted(counts):
                out.write(render(TopicRate(wall, topic, counts[topic], now - window)) + "\n")
                counts[topic] = 0
            out.flush()
            window = now
            if last:
                return total
        wake = min(window + every_s, now + _RATE_TICK_S, end if end is not None else math.inf)
        await asyncio.sleep(max(0.0, wake - loop.time()))


# How often --rate drains its socket: far below the HWM at any fleet's 20 Hz.
_RATE_TICK_S = 0.2


def run(client: BusClient, *args: Any, **kwargs: Any) -> int:
    return asyncio.run(follow(client, *args, **kwargs))


def run_rates(client: BusClient, *args: Any, **kwargs: Any) -> int:
    return asyncio.run(follow_rates(client, *args, **kwargs))
