"""The states applied once, for real, into a copy of the cached debootstrap tree."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import require
from tests.states.tree import PILLAR_EXAMPLE, Applied, Tree, base_tree, build_wheel


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (chroot, mounts, systemd-nspawn, network namespaces)")


@pytest.fixture(scope="session")
def fresh_apply(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Tree, Applied]]:
    """A fresh Debian 12 tree after one `state.apply` with states/pillar.example."""
    need_root()
    require("debootstrap", "chroot", "systemd-nspawn", "nsenter", "nft")
    work = tmp_path_factory.mktemp("states")
    # One wheel for every apply of the session: the checkout may change meanwhile.
    wheel = build_wheel(work / "dist")
    tree = Tree(work / "tree", wheel)
    subprocess.run(["cp", "-a", str(base_tree()), str(tree.path)], check=True)
    try:
        yield tree, tree.apply(PILLAR_EXAMPLE)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def applied(fresh_apply: tuple[Tree, Applied]) -> Tree:
    tree, first = fresh_apply
    assert first.returncode == 0, f"first apply failed: {first.failed() or first.stderr[-3000:]}"
    return tree
