"""Shared fixtures: a development box in a temp dir, run as real processes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.box import Box, make_box, pids_under


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    """An initialised (not started) development box; stopped and leak-checked afterwards."""
    b = make_box(tmp_path)
    yield b
    b.down()
    leaked = pids_under(b.dir)
    assert not leaked, f"processes left behind under {b.dir}: {leaked}"


@pytest.fixture
def running_box(box: Box) -> Iterator[Box]:
    box.add_user("alice")
    box.up()
    yield box


def require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing test peers {missing}: run `make test` (it installs them)")
