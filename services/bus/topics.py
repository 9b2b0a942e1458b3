"""Bus topics, the payload each one carries, and which ones are control.

Topics are dotted strings matched by prefix (ZeroMQ's SUB filter), so
"frames." receives every forwarder's counts and "frames.h1" receives h1's
(and, being a prefix, h10's: use :func:`exact` to filter when it matters).
"""

from __future__ import annotations

from functools import lru_cache

HEARTBEAT = "heartbeat"
FRAMES = "frames"
LINKS = "links"
STATE = "state"
DESIRED = "desired"
TRAFFIC_MATRIX = "traffic.matrix"
TOPOLOGY_CHANGE = "topology.change"
PLAN = "plan"
MIGRATION = "migration"
CONTROL_MIGRATE = "control.migrate"
CONTROL_GUEST = "control.guest"
APP = "app"
PROBE = "_probe"

# Topic root -> the Envelope payload field it must carry.
PAYLOAD_FOR_ROOT: dict[str, str] = {
    HEARTBEAT: "heartbeat",
    FRAMES: "frame_counts",
    LINKS: "link_measurements",
    STATE: "forwarder_state",
    DESIRED: "desired_state",
    TRAFFIC_MATRIX: "traffic_matrix",
    TOPOLOGY_CHANGE: "topology_change",
    PLAN: "plan",
    MIGRATION: "migration_status",
    CONTROL_MIGRATE: "migration_request",
    CONTROL_GUEST: "guest_command",
    APP: "app_report",
    PROBE: "probe",
}

# Topics only allow-listed keys may publish when CURVE is configured.
CONTROL_ROOTS: tuple[str, ...] = (DESIRED, PLAN, CONTROL_MIGRATE, "control")


def join(root: str, *parts: str) -> str:
    """Build a topic: join("frames", "h1") == "frames.h1"."""
    for part in parts:
        if not part or "." in part:
            raise ValueError(f"topic part {part!r} must be non-empty and contain no '.'")
    return ".".join((root, *parts))


@lru_cache(maxsize=4096)
def root_of(topic: str) -> str | None:
    """The known root a topic belongs to, longest match first, or None."""
    best: str | None = None
    for root in PAYLOAD_FOR_ROOT:
        if (topic == root or topic.startswith(root + ".")) and (
            best is None or len(root) > len(best)
        ):
            best = root
    return best


def is_control(topic: str) -> bool:
    return any(topic == r or topic.startswith(r + ".") for r in CONTROL_ROOTS)


def exact(topic: str, prefix: str) -> bool:
    """True when topic is prefix itself or below it at a dot boundary."""
    return topic == prefix or topic.startswith(prefix if prefix.endswith(".") else prefix + ".")
