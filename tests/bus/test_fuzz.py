"""Fuzz the envelope parser: whatever arrives, it returns a message or BadMessage."""

from __future__ import annotations

import random

from services.bus import envelope
from services.bus.envelope import BadMessage
from tests.bus.samples import SAMPLES


def _check(frames: list[bytes]) -> str:
    try:
        msg = envelope.decode(frames, max_bytes=4096)
    except BadMessage as exc:
        return exc.reason
    assert msg.source and msg.seq > 0 and msg.kind
    return "ok"


def test_random_bytes_never_escape_as_anything_but_bad_message() -> None:
    rng = random.Random(1234)
    reasons: set[str] = set()
    for _ in range(5000):
        nframes = rng.choice([1, 2, 2, 2, 3])
        frames = [rng.randbytes(rng.randrange(0, 300)) for _ in range(nframes)]
        reasons.add(_check(frames))
    assert {"bad_frames", "unparsable"} <= reasons


def test_mutated_valid_envelopes_are_parsed_or_rejected() -> None:
    rng = random.Random(99)
    valid = [envelope.encode(t, "s@h", 1, 1, 0.0, p) for t, p in SAMPLES.values()]
    outcomes: set[str] = set()
    for _ in range(5000):
        topic, body = rng.choice(valid)
        mutated = bytearray(body)
        for _ in range(rng.randrange(1, 4)):
            op = rng.randrange(3)
            pos = rng.randrange(len(mutated) or 1)
            if op == 0 and mutated:
                mutated[pos] ^= 1 << rng.randrange(8)
            elif op == 1:
                mutated.insert(pos, rng.randrange(256))
            elif mutated:
                del mutated[pos]
        outcomes.add(_check([topic, bytes(mutated)]))
    assert "ok" in outcomes and len(outcomes) > 2
