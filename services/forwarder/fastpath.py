"""The forwarder's compiled fast path (_fastpath.c), when it is built and wanted.

The common frame -- unicast, its route already cached, both ends an fd the
fast path can write -- crosses the forwarder without running bytecode: a
reader callback in C reads it, finds its port in core.py's own route cache,
counts it into core.py's own counters and writes it out. Everything else
goes to the Python data path, which stays the definition of forwarding.

The build is optional (setup.py): without a C compiler, or with
VNET_FASTPATH=0 or `--no-fastpath`, the forwarder runs in pure Python.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from services.forwarder import framing
from services.forwarder.core import ForwarderCore
from services.forwarder.links import RECV_BUFFER, RECV_CHUNK, LinkOwner, StreamConn

try:
    from services.forwarder import _fastpath as compiled
    from services.forwarder._fastpath import Sink, Switch
except ImportError:  # built without a C compiler: the pure-Python path only
    compiled = None  # type: ignore[assignment]

__all__ = ["PORT_COUNTED", "PORT_IN", "FastStreamConn", "Sink", "Switch", "compiled",
           "port_flags", "wanted"]

# Port flags, as _fastpath.c reads them.
PORT_IN = 1  # frames from this port may go fast
PORT_COUNTED = 2  # frames from this port are counted per (src, dst)
_SEGMENT_SHIFT = 4
_MAX_SEGMENTS = 15


def wanted(setting: bool = True) -> bool:
    """Compiled, and not turned off by the setting or VNET_FASTPATH=0."""
    return setting and compiled is not None and os.environ.get("VNET_FASTPATH", "1") != "0"


def port_flags(core: ForwarderCore) -> bytes:
    """One flags byte per port: live, counted, and a small id for its segment.

    A port on a segment beyond the few ids the byte holds is left to Python.
    """
    flags = bytearray(len(core.ports))
    segment_ids: dict[str, int] = {}
    for i, port in enumerate(core.ports):
        if port is None or not port.up:
            continue
        flag = PORT_IN | (PORT_COUNTED if core.counted(i) else 0)
        if port.segment:
            seg = segment_ids.setdefault(port.segment, len(segment_ids) + 1)
            if seg > _MAX_SEGMENTS:
                continue
            flag |= seg << _SEGMENT_SHIFT
        flags[i] = flag
    return bytes(flags)


if compiled is not None:

    class FastStreamConn(compiled.StreamBase, StreamConn):
        """A link connection whose receive half (get_buffer, buffer_updated) is C.

        Until go_fast() names its port, every message goes through _deliver()
        exactly as StreamConn's own; the handshake always does. While it is fast
        on plain TCP, the socket is read by a reader callback in C (readable)
        on a duplicate of its fd, the transport's reading paused: each wake-up
        is then one call from the loop instead of three (get_buffer twice,
        buffer_updated), the part of a light-load hop that is Python's. The
        link's sink writes to the same duplicate, asking the transport first
        only when bytes were handed to it (queued). Closing stays the
        transport's; at the end of the stream, or an error, reading goes back
        to the transport, which meets it again and reports it as it always does.
        """

        def __init__(self, owner: LinkOwner, dialer: bool, link: Any = None) -> None:
            # StreamBase's (empty) __init__ comes first in the MRO: name StreamConn's.
            StreamConn.__init__(self, owner, dialer, link)

        def _make_buffer(self) -> None:
            self.setup(RECV_BUFFER, RECV_CHUNK, framing.MAX_LINK_MESSAGE,
                       framing.MAX_CONTROL_BODY, framing.MESSAGE_TYPES)

        def go_fast(self, switch: Any = None, port: int = -1, stats: Any = None,
                    clock_owner: Any = None) -> None:
            compiled.StreamBase.go_fast(self, switch, port, stats, clock_owner)
            if switch is not None and port >= 0:
                self._read_in_c()
            else:
                self._read_in_transport()

        def _read_in_c(self) -> None:
            t = self.transport
            if self.read_fd >= 0 or self._fd < 0 or t is None or t.is_closing():
                return
            t.pause_reading()
            fd = os.dup(self._fd)  # ours: the transport's number may be reused once it closes
            asyncio.get_running_loop().add_reader(fd, self.readable)
            self.read_from(fd)

        def _read_in_transport(self) -> None:
            """Stop reading in C (also the C reader's call at the end of the stream)."""
            fd = self.read_fd
            if fd < 0:
                return
            self.read_from(-1)
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)  # before the transport closes: ours would keep the socket open
            t = self.transport
            if t is not None and not t.is_closing():
                t.resume_reading()

        def _to_transport(self, t: asyncio.Transport, data: bytes) -> None:
            t.write(data)
            self.queued = 1  # the sink asks the transport before writing around it

        def connection_lost(self, exc: Exception | None) -> None:
            self._read_in_transport()
            StreamConn.connection_lost(self, exc)

        def close(self) -> None:
            self._read_in_transport()
            StreamConn.close(self)
