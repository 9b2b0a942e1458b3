"""The compiled fast path is there wherever it can be built.

setup.py builds `_fastpath.c` optionally, so a machine without a C compiler
still installs; but a build that fails on a machine with one leaves the
forwarder all-Python (or an older module in place) without a word.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.forwarder import fastpath


def test_the_fast_path_is_built_from_the_current_source() -> None:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler: the pure-Python path is the intended one")
    assert fastpath.compiled is not None, "_fastpath.c did not build: see `pip install -e .`"
    source = Path(fastpath.__file__).with_name("_fastpath.c")
    built = Path(str(fastpath.compiled.__file__))
    assert built.stat().st_mtime >= source.stat().st_mtime, f"{built.name} is older than its source"
