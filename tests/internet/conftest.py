"""One simulated Internet for the package: knot, the box, Postfix and swaks in network namespaces."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.internet.world import World, build


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.fail("the Internet tests need root (network namespaces): run `make test` as root")
    for tool in ("ip", "ss", "swaks", "knotd", "knotc", "postfix"):
        if shutil.which(tool) is None:
            pytest.fail(f"missing test peer {tool}: run `make deps-debian` (scripts/peercheck.py)")
    w = build(tmp_path_factory.mktemp("internet"))
    yield w
    left = w.teardown()
    assert not left, f"teardown left things behind: {left}"
