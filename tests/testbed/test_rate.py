"""The WAN shaper gives the configured rate (iperf3, generous tolerance)."""

from __future__ import annotations

import shutil

import pytest

from services.testbed.measure import iperf
from services.testbed.spec import TestbedSpec
from services.testbed.testbed import Testbed

from .conftest import needs_netns

pytestmark = [pytest.mark.netns, pytest.mark.slow, needs_netns,
              pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs iperf3 (apt)")]


@pytest.mark.parametrize("shaper", ["tbf", "htb"])
def test_wan_rate_within_tolerance(shaper: str) -> None:
    rate = 20.0
    spec = TestbedSpec.from_dict({
        "site": [{"name": "a"}, {"name": "b"}],
        "host": [{"name": "proxy", "site": "a", "proxy": True}, {"name": "h1", "site": "b"}],
        "wan": [{"sites": ["a", "b"], "rate_mbit": rate, "delay_ms": 5, "shaper": shaper}],
    })
    with Testbed(spec) as tb:
        forward = iperf(tb, "proxy", "h1", seconds=2)
        reverse = iperf(tb, "proxy", "h1", seconds=2, reverse=True)
    for measured in (forward, reverse):
        assert 0.5 * rate <= measured <= 1.1 * rate, (forward, reverse)
