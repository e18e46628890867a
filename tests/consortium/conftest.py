"""One consortium for the whole package: building it costs seconds, every scenario shares it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.consortium.harness import Consortium, copy_tree_logs


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    if os.geteuid() != 0:
        pytest.fail("the consortium scenarios need root (network namespaces): run `make consortium` as root")
    for tool in ("ip", "ss", "swaks"):
        if shutil.which(tool) is None:
            pytest.fail(f"missing test peer {tool}: run `make deps-debian`")
    base = tmp_path_factory.mktemp("consortium")
    w = Consortium.build(base)
    yield w
    copy_tree_logs(w, base / "logs")
    left = w.teardown()
    assert not left, f"teardown left things behind: {left}"
