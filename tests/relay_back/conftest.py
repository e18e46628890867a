"""Fixtures for the spool/delivery tests: a dev box whose config the test can tune."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from appliance.accounts import AccountStore
from appliance.config import Config, load
from tests.helpers.box import make_box, run_cli
from tests.helpers.wait import wait_for
from tests.relay_back.relayproc import Load, RelayProcess, raise_member_limits


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


@dataclass
class StuckQueue:
    """A dev box whose mail for alice cannot be delivered yet (her Maildir path is a plain file) and
    whose retry backoff is an hour: messages sent to her stay queued, for the `appliance queue` tests."""

    config_file: Path
    cfg: Config
    box_mail: Path  # example.test's mail directory

    def block(self) -> None:
        (self.box_mail / "alice").write_text("blocked\n")

    def unblock(self) -> None:
        (self.box_mail / "alice").unlink()

    def relay(self, log: Path) -> RelayProcess:
        return RelayProcess(self.config_file, log).start(self.cfg)

    def queue(self) -> dict[str, dict[str, Any]]:
        """`appliance queue list --json` by queue id, oldest first."""
        return {r["id"]: r for r in json.loads(run_cli(self.config_file, "queue", "list", "--json").stdout)}

    def send(self, n: int, tag: str = "m") -> dict[str, dict[str, Any]]:
        """Send N messages to alice through the running relay; the queue once each was tried once."""
        load = Load(self.cfg.listeners.mx.host, self.cfg.listeners.mx.port, "alice@example.test", sessions=1,
                    max_messages=n, tag=tag)
        load.run()
        assert len(load.acked) == n

        def deferred() -> dict[str, dict[str, Any]] | None:
            q = self.queue()
            return q if len(q) == n and all(r["attempts"] >= 1 for r in q.values()) else None

        return wait_for(f"{n} message(s) deferred once", deferred, 60, 0.5)


@pytest.fixture
def stuck_queue(devbox: tuple[Path, Config]) -> StuckQueue:
    config_file, _ = devbox
    cfg = tune(config_file, relay={"retry_initial": 3600, "retry_max": 3600})
    raise_member_limits(cfg)
    box_mail = Path(cfg.paths.mail_dir) / "example.test"
    box_mail.mkdir(parents=True, exist_ok=True)
    write_registry(cfg, [])
    stuck = StuckQueue(config_file, cfg, box_mail)
    stuck.block()
    return stuck
