"""The dry-run backend: says and publishes what a move would do, changes nothing."""

from __future__ import annotations

from services.migrator.model import Move, MoveControl, Outcome


class DryRunBackend:
    name = "dry-run"

    async def run(self, move: Move, ctl: MoveControl) -> Outcome:
        g = move.guest
        steps = [
            f"would attach {g.id} ({g.mac}, {g.attachment}) on {move.to_host}, waiting",
            f"would move {g.id} from {move.from_host} to {move.to_host}",
            f"would wait for {move.to_host} to report {g.id} live (forwarding switches then)",
            f"would release {g.id} on {move.from_host}",
        ]
        for i, step in enumerate(steps, 1):
            ctl.progress(i / (len(steps) + 1), step)
        return Outcome(True, detail="dry run: nothing changed")

    async def recover(self, move: Move, phase: str, ctl: MoveControl) -> str:
        return "dry run: nothing to recover"
