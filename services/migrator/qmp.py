"""A small QMP client on asyncio streams, so the migrator keeps one loop.

QMP is JSON lines over a UNIX socket: a greeting, `qmp_capabilities`, then
commands each answered by a `return` or an `error` carrying the command's
id; asynchronous events may come in between. Commands go one at a time
(a lock), events are kept in a bounded queue (oldest dropped). A timeout or
a broken line closes the connection: its state is unknown after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import deque
from typing import Any

MAX_LINE = 1 << 20  # a query-qmp-schema answer is ~200 KB
EVENTS_KEPT = 256


class QmpError(Exception):
    """QEMU answered a command with an error, or the connection failed."""


class Qmp:
    def __init__(self, path: str, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.path = path
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.closed = False

    @classmethod
    async def connect(cls, path: str, timeout: float = 5.0) -> Qmp:
        """Connect, read the greeting and leave capabilities negotiation mode."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(path, limit=MAX_LINE), timeout)
        except (OSError, TimeoutError) as exc:
            raise QmpError(f"QMP socket {path}: cannot connect: {exc or 'timed out'}") from exc
        qmp = cls(path, reader, writer)
        try:
            greeting = await qmp._read(timeout)
            if "QMP" not in greeting:
                raise QmpError(f"QMP socket {path}: no greeting, got {greeting!r:.200}")
            await qmp.execute("qmp_capabilities", timeout=timeout)
        except BaseException:
            await qmp.close()
            raise
        return qmp

    async def _read(self, timeout: float) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(self._reader.readline(), timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            await self.close()
            raise QmpError(f"QMP socket {self.path}: read failed: {exc or 'timed out'}") from exc
        if not line:
            await self.close()
            raise QmpError(f"QMP socket {self.path}: QEMU closed the connection")
        try:
            msg = json.loads(line)
        except ValueError as exc:
            await self.close()
            raise QmpError(f"QMP socket {self.path}: bad JSON {line[:200]!r}") from exc
        if not isinstance(msg, dict):
            await self.close()
            raise QmpError(f"QMP socket {self.path}: not an object: {line[:200]!r}")
        return msg

    async def execute(self, command: str, arguments: dict[str, Any] | None = None,
                      timeout: float = 5.0) -> Any:
        """Run one command; its `return` value, or QmpError with QEMU's description."""
        async with self._lock:
            if self.closed:
                raise QmpError(f"QMP socket {self.path}: closed")
            cid = f"vnet-{next(self._ids)}"
            req: dict[str, Any] = {"execute": command, "id": cid}
            if arguments:
                req["arguments"] = arguments
            try:
                self._writer.write(json.dumps(req).encode() + b"\n")
                await asyncio.wait_for(self._writer.drain(), timeout)
            except (OSError, TimeoutError) as exc:
                await self.close()
                raise QmpError(f"QMP {command}: write failed: {exc or 'timed out'}") from exc
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                msg = await self._read(max(0.001, deadline - loop.time()))
                if "event" in msg:
                    self.events.append(msg)
                    continue
                if msg.get("id") != cid:
                    continue  # an answer to a command whose wait timed out: stale
                if "error" in msg:
                    err = msg["error"]
                    raise QmpError(f"QMP {command}: {err.get('class', '?')}:"
                                   f" {err.get('desc', err)}")
                return msg.get("return")

    async def hmp(self, command_line: str, timeout: float = 5.0) -> str:
        """A human-monitor command (for what QMP has no query for)."""
        out = await self.execute("human-monitor-command", {"command-line": command_line},
                                 timeout)
        return str(out)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)


async def connect_quietly(path: str, timeout: float = 2.0) -> Qmp | None:
    """A QMP connection, or None when nothing answers there."""
    try:
        return await Qmp.connect(path, timeout)
    except QmpError:
        return None
