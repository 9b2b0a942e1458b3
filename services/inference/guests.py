"""Guest identity: which guest a MAC belongs to and on which host it lives.

Identity comes from forwarder state (guest id + MAC), not from counts, so a
guest that migrates keeps its node (its index) and a restarted forwarder
re-announces the same guests. Indices are dense and never reused: they index
the traffic matrix's rows and columns.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from services.bus.counters import Counters
from services.bus.pb import vnet_pb2 as pb

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

# What a MAC string in a frame count is, when it is no guest's.
GROUP = -1  # broadcast or multicast
UNKNOWN = -2  # unicast, but no forwarder announced a guest with it
MALFORMED = -3  # not a MAC at all
_CODES_KEPT = 100_000  # non-guest spellings remembered before the cache restarts


def normalise_mac(text: str) -> str | None:
    """Lower-case "aa:bb:cc:dd:ee:ff", or None when the text is no MAC."""
    mac = text.strip().lower().replace("-", ":")
    return mac if _MAC.match(mac) else None


def is_group(mac: str) -> bool:
    """Broadcast or multicast (the I/G bit of the first octet): never an edge."""
    return bool(int(mac[:2], 16) & 1)


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort "g2" before "g10", deterministically."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.split(r"(\d+)", name)
        if part
    )


IndexArray = npt.NDArray[np.intp]


class _Codes(dict[str, int]):
    """MAC spelling -> code, classifying a spelling on first sight (bounded)."""

    def __init__(self, classify: Callable[[str], int]) -> None:
        super().__init__()
        self.classify = classify

    def __missing__(self, mac: str) -> int:
        if len(self) >= _CODES_KEPT:
            self.clear()  # junk spellings must not grow it without bound
        code = self[mac] = self.classify(mac)
        return code


@dataclass
class GuestTable:
    """Guest ids ↔ matrix indices, MAC → index, and each host's guests."""

    counters: Counters = field(default_factory=Counters)
    ids: list[str] = field(default_factory=list)
    index_of: dict[str, int] = field(default_factory=dict)
    mac_index: dict[str, int] = field(default_factory=dict)
    host_guests: dict[str, frozenset[int]] = field(default_factory=dict)
    # Every MAC spelling seen in counts -> guest index or a negative code, so
    # the per-pair work is one dict lookup; rebuilt when guests change.
    _codes: _Codes = field(init=False)
    _masks: dict[str, npt.NDArray[np.bool_]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._codes = _Codes(self._classify)

    def __len__(self) -> int:
        return len(self.ids)

    def apply_state(self, state: pb.ForwarderState) -> list[str]:
        """Take a host's attached guests; returns errors (each also counted)."""
        errors: list[str] = []
        local: set[int] = set()
        for guest in state.guests:
            mac = normalise_mac(guest.mac)
            if not guest.id or mac is None or is_group(mac):
                self.counters.inc("state_bad_guest")
                errors.append(
                    f"host {state.host!r} lists guest {guest.id!r} with MAC {guest.mac!r}:"
                    " needs an id and a unicast MAC"
                )
                continue
            idx = self.index_of.get(guest.id)
            if idx is None:
                idx = len(self.ids)
                self.ids.append(guest.id)
                self.index_of[guest.id] = idx
            old = self.mac_index.get(mac)
            if old is not None and old != idx:
                self.counters.inc("mac_reassigned")
                errors.append(
                    f"MAC {mac} moved from guest {self.ids[old]!r} to {guest.id!r}"
                    f" (state of host {state.host!r})"
                )
            if self.mac_index.get(mac) != idx:
                self.mac_index[mac] = idx
                self._codes.clear()
            local.add(idx)
        frozen = frozenset(local)
        if self.host_guests.get(state.host) != frozen:
            self.host_guests[state.host] = frozen
            self._masks.clear()
        return errors

    def local_to(self, host: str) -> frozenset[int]:
        return self.host_guests.get(host, frozenset())

    def local_mask(self, host: str) -> npt.NDArray[np.bool_]:
        """mask[i]: guest i is attached at host (per its latest state)."""
        mask = self._masks.get(host)
        if mask is None or len(mask) != len(self.ids):
            mask = np.zeros(len(self.ids), dtype=bool)
            mask[list(self.local_to(host))] = True
            self._masks[host] = mask
        return mask

    def codes(self, macs: Sequence[str]) -> IndexArray:
        """Guest index, or GROUP / UNKNOWN / MALFORMED, for each MAC spelling.

        One C-level pass (map over the cache, straight into numpy); only a
        spelling not seen before costs Python work, in :meth:`_Codes.__missing__`.
        """
        return np.fromiter(map(self._codes.__getitem__, macs), dtype=np.intp, count=len(macs))

    def _classify(self, text: str) -> int:
        mac = normalise_mac(text)
        if mac is None:
            return MALFORMED
        if is_group(mac):
            return GROUP
        return self.mac_index.get(mac, UNKNOWN)
