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
        exactly as StreamConn's own; the handshake always does.
        """

        def __init__(self, owner: LinkOwner, dialer: bool, link: Any = None) -> None:
            # StreamBase's (empty) __init__ comes first in the MRO: name StreamConn's.
            StreamConn.__init__(self, owner, dialer, link)

        def _make_buffer(self) -> None:
            self.setup(RECV_BUFFER, RECV_CHUNK, framing.MAX_LINK_MESSAGE,
                       framing.MAX_CONTROL_BODY, framing.MESSAGE_TYPES)
