"""The forwarder benchmark's reference relays carry real traffic between two guests.

The floor paths are only worth their figures if they relay what vnet relays:
pings, and TCP with offloads on (GSO frames and partial checksums, through
PACKET_VNET_HDR). Both builds, Python and C, on the benchmark's own testbed.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from bench import forwarder as fb
from services.testbed.spec import TestbedSpec
from services.testbed.testbed import Testbed
from tests.testbed.conftest import leftovers, needs_netns

pytestmark = needs_netns

LANGUAGES = ["python", pytest.param("c", marks=pytest.mark.skipif(
    shutil.which("cc") is None, reason="needs a C compiler (apt: gcc)"))]


@pytest.mark.parametrize("language", LANGUAGES)
def test_floor_relay_carries_ping_and_offloaded_tcp(language: str) -> None:
    s = fb.ForwarderBenchSettings(ready_timeout_s=10.0)
    spec = TestbedSpec.from_dict(fb.SPEC, name=f"floor-{language}")
    pids: list[int] = []
    with Testbed(spec) as tb:
        prefix = tb.prefix
        server = tb.popen(tb.guest(fb.VETH.dst).netns, ["iperf3", "-s", "-1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pids.append(server.pid)
        with fb.floor_path(tb, s, fb.floor_command(language)) as procs:
            pids += [p.pid for p in procs]
            fb._wait_ping(tb, s, language)
            r = tb.run(tb.guest(fb.VETH.src).netns,
                       ["iperf3", "-c", tb.guest(fb.VETH.dst).ip, "-t", "1", "-J"], timeout=30)
            received = json.loads(r.stdout)["end"]["sum_received"]["bytes"]
            assert received > 10_000_000  # MBs of TCP through the relay: GSO frames pass
            assert all(p.poll() is None for p in procs)  # neither relay died on the way
        fb._stop(server)
    assert leftovers(prefix, pids) == []
