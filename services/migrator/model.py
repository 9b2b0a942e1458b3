"""A move, its outcome, and the interfaces between the shell and the backends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.bus.pb import vnet_pb2 as pb


@dataclass(frozen=True)
class Move:
    migration_id: str
    guest: pb.Guest  # as the source forwarder reports it (id, MAC, attachment)
    from_host: str
    to_host: str
    requested_by: str = ""

    @property
    def guest_id(self) -> str:
        return str(self.guest.id)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    error: str = ""
    downtime_s: float = 0.0  # from the switch until the destination holds the guest live
    bytes_moved: int = 0
    detail: str = ""


class MoveFailed(Exception):
    """A step failed; the backend has rolled back (or says in the text that it could not)."""


class MoveControl(Protocol):
    """What the shell does for a backend; each call waits until forwarders confirm."""

    async def attach(self, host: str, guest: pb.Guest, timeout: float) -> bool:
        """Make host's forwarder hold guest (waiting or standby); True once its state says so."""
        ...

    async def await_live(self, host: str, guest_id: str, timeout: float) -> bool:
        """True once host's forwarder reports the guest live."""
        ...

    async def detach(self, host: str, guest_id: str, timeout: float) -> bool:
        """Make host's forwarder let the guest go; True once its state no longer lists it."""
        ...

    def progress(self, fraction: float, detail: str, bytes_moved: int = 0) -> None: ...

    def phase(self, name: str) -> None:
        """Record the step in the journal before taking it (crash recovery reads it)."""
        ...


class Backend(Protocol):
    name: str

    async def run(self, move: Move, ctl: MoveControl) -> Outcome:
        """Carry out the move, or roll back and return a failed Outcome."""
        ...

    async def recover(self, move: Move, phase: str, ctl: MoveControl) -> str:
        """After a crash mid-move: put the guest back at its source; say what was done."""
        ...
