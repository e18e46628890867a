"""Fixtures for the spool/delivery tests: a dev box whose config the test can tune."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from appliance.accounts import AccountStore
from appliance.config import Config, load
from tests.helpers.box import make_box


def tune(config_file: Path, **sections: dict[str, Any]) -> Config:
    """Merge SECTIONS into the box's TOML (one level deep) and return the reloaded config."""
    data = tomllib.loads(config_file.read_text())
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    config_file.write_text(tomli_w.dumps(data))
    return load(config_file)


def write_registry(cfg: Config, members: list[dict[str, Any]]) -> None:
    """Replace the dev registry's member list (keeps the box's own entry first)."""
    p = cfg.registry_dir / "registry.json"
    reg = json.loads(p.read_text())
    reg["members"] = reg["members"][:1] + members
    p.write_text(json.dumps(reg, indent=2))


@pytest.fixture
def devbox(tmp_path: Path) -> Iterator[tuple[Path, Config]]:
    b = make_box(tmp_path)
    cfg = tune(b.config_file, relay={"retry_initial": 1, "retry_max": 2})
    store = AccountStore(cfg.paths.accounts_db)
    store.add("alice@example.test", "correct horse battery")
    store.add("bob@example.test", "correct horse battery")
    store.close()
    yield b.config_file, cfg
