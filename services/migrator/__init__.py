"""The migrator: moves guests between hosts, make-before-break, through a backend.

- `model`: a move, its outcome, and the two small interfaces — `Backend` (how a
  guest moves: netns, qemu, dry-run) and `MoveControl` (what the shell offers a
  backend: attach, await live, detach, progress, journal).
- `core`: pure bookkeeping — where guests live (from `state.*`), validating
  requests, the concurrency limit and the status messages.
- `journal`: in-flight moves on disk, so a migrator killed mid-move rolls them
  back when it starts again.
- `netns`, `dryrun` (and `qemu`): the backends. `memcopy` charges a netns move
  the cost of copying a guest's memory across the underlay.
- `service`: the asyncio shell on the bus; `cli`: `vnet migrator`, `vnet migrate`.

The protocol of every move: prepare the destination (its forwarder holds the
guest, waiting or on standby: not live), move, let the destination go live
(the forwarder re-announces the guest to the proxy, so forwarding switches at
once), then release the source. A failure before release rolls back, so the
guest stays reachable where it was; it is live on one forwarder at a time.
"""
