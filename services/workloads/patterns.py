"""The Patterns worker's pure core: its parameters, its per-iteration schedule, its progress.

An iteration is a compute phase, then the schedule's steps in order; a step
waits until the listed peers' messages of this iteration have arrived, then
sends its messages. Neighbour exchange (every topology but reduction) is two
steps: send to every neighbour, then wait for every neighbour, so no worker
starts iteration k+1 before its neighbours finished sending iteration k: the
barrier-like step of a bulk-synchronous program. A reduction waits for its
children, sends the reduced message to its parent, waits for the parent's
release and passes the release down (a small header-only message), so the
whole tree moves in step with the root.

No sockets and no clock in here: the worker (worker.py) does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.workloads import topologies

DEFAULT_PORT = 7900
ITERATION_MODULUS = 1 << 32  # iteration numbers travel as 32-bit counters


class ProtocolError(RuntimeError):
    """A peer sent something a Patterns worker never sends."""


@dataclass(frozen=True)
class Step:
    wait: tuple[int, ...]             # peers whose message of this iteration must be in
    send: tuple[tuple[int, int], ...]  # then send (peer, payload bytes)


@dataclass(frozen=True)
class PatternsParams:
    """One worker's settings; every worker of a run gets the same ones but rank and guest."""

    topology: str
    peers: tuple[str, ...]      # every worker's "ip" or "ip:port", by rank
    rank: int
    guest: str = ""             # name in reports and bus topics; default "rank<rank>"
    msg_bytes: int = 65536      # payload of one message to one neighbour
    compute_s: float = 0.0      # busy CPU time per iteration, wall clock
    compute_ops: int = 0        # fixed CPU work per iteration (slower when the CPU is shared)
    ops_per_byte: float = 0.0   # more work in proportion to the bytes sent per iteration
    duration_s: float = 0.0     # stop after this long (0: no limit)
    iterations: int = 0         # stop after this many iterations (0: no limit)
    port: int = DEFAULT_PORT    # for peers given without a port
    report_interval_s: float = 1.0
    connect_timeout_s: float = 30.0  # all neighbour connections up within this
    drain_timeout_s: float = 5.0     # wait this long for neighbours to finish at the end
    endpoints: tuple[tuple[str, int], ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "topology", topologies.canonical(self.topology))
        object.__setattr__(self, "endpoints", tuple(_endpoint(p, self.port) for p in self.peers))
        if not self.guest:
            object.__setattr__(self, "guest", f"rank{self.rank}")

    @property
    def workers(self) -> int:
        return len(self.peers)

    def check(self) -> None:
        """Raise ValueError naming the bad setting and what would do."""
        topologies.check(self.topology, self.workers)
        if not 0 <= self.rank < self.workers:
            raise ValueError(f"--rank {self.rank} is outside 0..{self.workers - 1}"
                             f" ({self.workers} peers given)")
        if len(set(self.endpoints)) != len(self.endpoints):
            raise ValueError(f"peers {','.join(self.peers)} repeat an address:"
                             " give each worker its own ip (or ip:port)")
        if "." in self.guest or not self.guest:
            raise ValueError(f"guest name {self.guest!r} must be non-empty and contain no '.'")
        if self.msg_bytes < 0 or self.msg_bytes >= ITERATION_MODULUS:
            raise ValueError(f"--msg-bytes {self.msg_bytes} is outside 0..{ITERATION_MODULUS - 1}")
        if min(self.compute_s, self.compute_ops, self.ops_per_byte) < 0:
            raise ValueError("compute settings must not be negative")
        if self.compute_s and (self.compute_ops or self.ops_per_byte):
            raise ValueError("give compute as time (--compute-s) or as work"
                             " (--compute-ops, --ops-per-byte), not both")
        if self.duration_s < 0 or self.iterations < 0:
            raise ValueError("--duration and --iterations must not be negative")
        if self.report_interval_s <= 0:
            raise ValueError(f"--report-interval-s {self.report_interval_s} must be positive")

    def work_ops(self) -> int:
        """CPU work per iteration in operations (worker.compute's unit)."""
        sent = sum(size for step in schedule(self.topology, self.workers, self.rank,
                                             self.msg_bytes) for _, size in step.send)
        return self.compute_ops + round(self.ops_per_byte * sent)


def _endpoint(peer: str, port: int) -> tuple[str, int]:
    host, sep, given = peer.rpartition(":")
    if not sep:
        return peer, port
    try:
        return host, int(given)
    except ValueError:
        raise ValueError(f"peer {peer!r} is not ip or ip:port") from None


def schedule(topology: str, n: int, rank: int, msg_bytes: int) -> tuple[Step, ...]:
    """One iteration's steps for rank (after its compute phase)."""
    topology = topologies.canonical(topology)
    if topology != topologies.REDUCTION:
        nbrs = topologies.neighbours(topology, n, rank)
        return (Step((), tuple((p, msg_bytes) for p in nbrs)), Step(nbrs, ()))
    topologies.check(topology, n)
    children = topologies.tree_children(rank, n)
    release = tuple((c, 0) for c in children)
    if rank == 0:
        return (Step(children, release),)
    parent = topologies.tree_parent(rank)
    return (Step(children, ((parent, msg_bytes),)), Step((parent,), release))


class Progress:
    """Where one worker is in its iterations: the step, and what each peer has sent."""

    def __init__(self, steps: tuple[Step, ...]) -> None:
        self.steps = steps
        self.iteration = 0  # the one in progress; also the number completed
        self.step = 0
        peers = {p for s in steps for p in s.wait} | {p for s in steps for p, _ in s.send}
        self.received: dict[int, int] = dict.fromkeys(sorted(peers), 0)

    def on_message(self, peer: int, iteration: int) -> None:
        """A whole message from peer; messages of one peer come in iteration order."""
        if peer not in self.received:
            raise ProtocolError(f"message from rank {peer}, which is no neighbour")
        expected = self.received[peer] % ITERATION_MODULUS
        if iteration != expected:
            raise ProtocolError(f"rank {peer} sent iteration {iteration}, expected {expected}")
        self.received[peer] += 1

    def advance(self) -> list[tuple[int, int]]:
        """The sends now due (peer, bytes); takes every step whose wait is over."""
        out: list[tuple[int, int]] = []
        while self.step < len(self.steps):
            st = self.steps[self.step]
            if any(self.received[p] <= self.iteration for p in st.wait):
                break
            out.extend(st.send)
            self.step += 1
        return out

    @property
    def complete(self) -> bool:
        """Every step of this iteration is taken (its sends handed out)."""
        return self.step == len(self.steps)

    def missing(self) -> tuple[int, ...]:
        """The peers the current step still waits for."""
        if self.complete:
            return ()
        return tuple(p for p in self.steps[self.step].wait if self.received[p] <= self.iteration)

    def next_iteration(self) -> None:
        if not self.complete:
            raise RuntimeError(f"iteration {self.iteration} is not complete (step {self.step})")
        self.iteration += 1
        self.step = 0
