"""The delay relay with real frames: every frame arrives intact, in order, never early."""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path

import pytest

from services.testbed.spec import TestbedSpec
from services.testbed.testbed import Testbed

from .conftest import needs_netns

pytestmark = [pytest.mark.netns, needs_netns]
ROOT = Path(__file__).resolve().parents[2]
TOOL = [sys.executable, "-m", "tests.testbed.frames_tool"]


def test_frames_cross_the_relay_intact_in_order_and_delayed() -> None:
    delay_ms, count = 20.0, 400
    spec = TestbedSpec.from_dict({
        "site": [{"name": "a"}, {"name": "b"}],
        "host": [{"name": "proxy", "site": "a", "proxy": True}],
        "wan": [{"sites": ["a", "b"], "delay_ms": delay_ms}],
    })
    with Testbed(spec) as tb:
        w = tb.plan.wans[0]
        sink = tb.popen(tb.site_netns("b"), [*TOOL, "recv", w.ifname_b, str(count), "20"],
                        stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
        assert sink.stdout is not None
        ready, _, _ = select.select([sink.stdout], [], [], 20)
        assert ready and json.loads(sink.stdout.readline())["ready"]
        sent = json.loads(tb.run(tb.site_netns("a"), [*TOOL, "send", w.ifname_a, str(count)],
                                 cwd=str(ROOT)).stdout)["sent"]
        received = json.loads(sink.communicate(timeout=30)[0])["received"]
    assert [seq for seq, _, _ in received] == list(range(count)), tb.relay_counters
    assert all(intact for _, _, intact in received)
    delays_ms = [(t - sent[seq]) * 1000 for seq, t, _ in received]
    assert min(delays_ms) >= delay_ms
    # Median on time, not absurdly late (a loaded 2-core machine may stall a process briefly).
    assert sorted(delays_ms)[count // 2] < delay_ms + 25.0
    assert tb.relay_counters["frames_out"] >= count
