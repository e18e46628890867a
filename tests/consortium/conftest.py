"""One consortium for the whole package: building it costs seconds, every scenario shares it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.consortium.harness import Consortium, copy_tree_logs, post_mortem


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed scenario reports each box's relay log tail and stacks (harness.post_mortem)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    world = getattr(item, "funcargs", {}).get("world")
    if report.when == "call" and report.failed and isinstance(world, Consortium):
        report.sections.append(("consortium post-mortem", post_mortem(world)))
