"""Compose testbed fixtures: the image (built by `make compose-build`), one stack per module.

Select these tests with `-m compose`; they are skipped where no docker engine answers.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Generator, Iterator

import pytest

from tests.compose.stack import ROOT, Stack, docker_unavailable


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "compose: the docker compose testbed (needs a docker engine; minutes)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing compose test carries the services' recent logs in its report."""
    report = yield
    stack = getattr(item, "funcargs", {}).get("stack")
    if report.failed and isinstance(stack, Stack):
        report.sections.append(("compose service logs", stack.logs()))
    return report


@pytest.fixture(scope="session")
def compose_image() -> str:
    """vnet:local, rebuilt from this tree (quick when cached); VNET_COMPOSE_IMAGE skips it."""
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    given = os.environ.get("VNET_COMPOSE_IMAGE")
    if given:
        return given
    done = subprocess.run(["make", "-C", str(ROOT), "compose-build"], capture_output=True,
                          text=True, timeout=1200, check=False)
    if done.returncode:
        pytest.fail(f"make compose-build failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return "vnet:local"


@pytest.fixture(scope="module")
def stack(compose_image: str) -> Iterator[Stack]:
    """The testbed up and healthy; always taken down (containers, networks, volumes)."""
    s = Stack(compose_image, net=os.environ.get("VNET_TEST_NET", "10.231"))
    try:
        s.up()
        yield s
    finally:
        s.down()
