"""In-flight moves on disk: written before each step, removed when a move ends.

A migrator killed mid-move finds its moves here when it starts again and has
its backend roll them back, so the guest ends where it was and reachable. One
small JSON file per move, replaced atomically (write, fsync, rename).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from services.bus.pb import vnet_pb2 as pb
from services.migrator.model import Move


@dataclass(frozen=True)
class Entry:
    move: Move
    phase: str


class Journal:
    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, migration_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in migration_id)
        return self.dir / f"{safe}.json"

    def write(self, move: Move, phase: str) -> None:
        data = {"migration_id": move.migration_id, "from_host": move.from_host,
                "to_host": move.to_host, "requested_by": move.requested_by, "phase": phase,
                "guest": json_format.MessageToDict(move.guest)}
        path = self._path(move.migration_id)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def remove(self, move: Move) -> None:
        self._path(move.migration_id).unlink(missing_ok=True)

    def entries(self) -> list[Entry]:
        out: list[Entry] = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                guest = json_format.ParseDict(data["guest"], pb.Guest())
                move = Move(migration_id=data["migration_id"], guest=guest,
                            from_host=data["from_host"], to_host=data["to_host"],
                            requested_by=data.get("requested_by", ""))
                out.append(Entry(move, data["phase"]))
            except (OSError, ValueError, KeyError, json_format.ParseError):
                path.rename(path.with_suffix(".bad"))  # kept for a human, not retried
        return out
