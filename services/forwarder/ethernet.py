"""Ethernet and virtio-net header handling: the only parsing on the data path.

Frames travel inside the forwarder as *vframes*: a 10-byte virtio_net_hdr
followed by the Ethernet frame. The header is what TAP (IFF_VNET_HDR) and
AF_PACKET (PACKET_VNET_HDR) hand us, so one read can carry a 64 KB GSO frame
whose checksum the kernel completes on the far side; sinks that do not speak
it (QEMU's stream netdev) get the header stripped and the checksum completed
in software. Only the 14-byte Ethernet header is looked at.
"""

from __future__ import annotations

import struct

VNET_HDR_LEN = 10
ETH_HDR_LEN = 14
MIN_VFRAME = VNET_HDR_LEN + ETH_HDR_LEN
# The largest frame a GSO read can carry: 64 KB of IP packet plus headers.
MAX_GSO_FRAME = 65_535 + ETH_HDR_LEN + 4
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)

# virtio_net_hdr flags and gso types (linux/virtio_net.h).
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_NONE = 0

_VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset

BROADCAST = b"\xff" * 6


class BadFrame(ValueError):
    """A frame that must be dropped; reason names the counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_frame(frame: bytes | memoryview, max_frame: int) -> str | None:
    """Why a plain Ethernet frame must be dropped, or None when it is fine."""
    n = len(frame)
    if n < ETH_HDR_LEN:
        return "runt"
    if n > max_frame:
        return "oversized"
    return None


def check_vframe(vframe: bytes | memoryview, max_frame: int) -> str | None:
    """Why a vframe (vnet header + frame) must be dropped, or None.

    A frame with a GSO type may be as large as a GSO read allows; without
    one it must fit max_frame (the configured MTU plus Ethernet headers).
    """
    n = len(vframe)
    if n < MIN_VFRAME:
        return "runt"
    limit = MAX_GSO_FRAME if vframe[1] != VIRTIO_NET_HDR_GSO_NONE else max_frame
    if n - VNET_HDR_LEN > limit:
        return "oversized"
    return None


def is_group(mac: bytes) -> bool:
    """Broadcast or multicast: the group bit of the first octet."""
    return bool(mac[0] & 1)


def mac_to_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def mac_from_str(text: str) -> bytes:
    """Parse "02:00:00:00:00:01" (or with '-'); raise ValueError naming the value."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6:
        raise ValueError(f"MAC address {text!r} must have six octets like 02:00:00:00:00:01")
    try:
        octets = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"MAC address {text!r} has a non-hex octet") from None
    if any(len(p) not in (1, 2) for p in parts):
        raise ValueError(f"MAC address {text!r} has an octet longer than two digits")
    return octets


def normalise_mac(text: str) -> str:
    """Canonical lower-case form, or "" for a wildcard."""
    return mac_to_str(mac_from_str(text)) if text else ""


def dst_src(vframe: bytes) -> tuple[bytes, bytes]:
    """Destination and source MAC of a vframe."""
    return vframe[10:16], vframe[16:22]


def _csum(data: bytes | bytearray | memoryview) -> int:
    """Internet checksum (RFC 1071) of data, folded, not inverted."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = sum(memoryview(data).cast("H"))
    # cast("H") reads native (little-endian) order; fold then swap to network order.
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ((total & 0xFF) << 8) | (total >> 8)


def to_plain(vframe: bytes) -> bytes | None:
    """The Ethernet frame for a sink without vnet headers; None if it needs GSO.

    A NEEDS_CSUM frame carries a partial checksum (the pseudo-header sum) at
    csum_start + csum_offset; complete it over the rest of the packet.
    """
    flags, gso_type, _hdr_len, _gso_size, csum_start, csum_offset = _VNET.unpack_from(vframe)
    if gso_type != VIRTIO_NET_HDR_GSO_NONE:
        return None
    frame = vframe[VNET_HDR_LEN:]
    if not flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        return frame
    at = csum_start + csum_offset
    if at + 2 > len(frame) or csum_start >= len(frame):
        return frame
    buf = bytearray(frame)
    # The partial sum is already in place; summing over it yields the full sum.
    value = (~_csum(buf[csum_start:])) & 0xFFFF
    # 0 and 0xFFFF are the same in ones' complement; UDP reserves 0 for "none".
    struct.pack_into("!H", buf, at, value or 0xFFFF)
    return bytes(buf)


def from_plain(frame: bytes) -> bytes:
    """A vframe for a frame from a source without vnet headers."""
    return ZERO_VNET_HDR + frame
