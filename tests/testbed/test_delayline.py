"""The delay relay's pure core, driven by a fake clock."""

from __future__ import annotations

from services.testbed.delayline import DelayLine

MS = 1_000_000


def test_nothing_leaves_early_and_everything_leaves_on_time() -> None:
    line = DelayLine()
    line.push(0, 10 * MS, 1, b"a")
    line.push(1 * MS, 10 * MS, 1, b"b")
    assert line.next_release_ns() == 10 * MS
    assert line.pop_due(10 * MS - 1) == []
    assert line.pop_due(10 * MS) == [(1, b"a")]
    assert line.next_release_ns() == 11 * MS
    assert line.pop_due(20 * MS) == [(1, b"b")]
    assert line.next_release_ns() is None and len(line) == 0


def test_frames_leave_by_release_time_across_links() -> None:
    line = DelayLine()
    line.push(0, 25 * MS, 0, b"slow")
    line.push(0, 5 * MS, 2, b"fast")
    line.push(0, 5 * MS, 3, b"fast2")  # same release time: arrival order
    assert line.pop_due(30 * MS) == [(2, b"fast"), (3, b"fast2"), (0, b"slow")]


def test_full_queue_drops_and_counts() -> None:
    line = DelayLine(capacity_bytes=10)
    assert line.push(0, MS, 0, b"123456")
    assert not line.push(0, MS, 0, b"123456")
    assert line.held_bytes == 6
    assert line.counters.frames_dropped_full == 1
    line.pop_due(MS)
    assert line.push(0, MS, 0, b"123456")
    c = line.counters
    assert (c.frames_in, c.frames_out, c.bytes_out) == (3, 1, 6)


def test_pop_due_limit() -> None:
    line = DelayLine()
    for i in range(5):
        line.push(0, 0, 0, bytes([i]))
    assert [f for _, f in line.pop_due(0, limit=2)] == [b"\x00", b"\x01"]
    assert len(line) == 3
