"""`appliance queue list | show | retry | delete | flush` against a spool with and without a running relay."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from appliance.config import Config
from tests.helpers.box import run_cli
from tests.helpers.wait import wait_for
from tests.relay_back.conftest import tune, write_registry
from tests.relay_back.relayproc import Load, RelayProcess, raise_member_limits

pytestmark = pytest.mark.peers


def deferred(config_file: Path, n: int) -> list[dict] | None:  # type: ignore[type-arg]
    """The queue listing once it holds N messages that have each been tried at least once."""
    rows = queue_json(config_file)
    return rows if len(rows) == n and all(r["attempts"] >= 1 for r in rows) else None


def queue_json(config_file: Path) -> list[dict]:  # type: ignore[type-arg]
    return json.loads(run_cli(config_file, "queue", "list", "--json").stdout)


def test_queue_commands(devbox: tuple[Path, Config], tmp_path: Path) -> None:
    config_file, cfg = devbox
    cfg = tune(config_file, relay={"retry_initial": 3600, "retry_max": 3600})
    raise_member_limits(cfg)
    # Two messages that cannot be delivered yet: alice's Maildir path is blocked by a plain file.
    box_mail = Path(cfg.paths.mail_dir) / "example.test"
    box_mail.mkdir(parents=True, exist_ok=True)
    (box_mail / "alice").write_text("blocked\n")
    write_registry(cfg, [])
    relay = RelayProcess(config_file, tmp_path / "relay.log").start(cfg)
    try:
        load = Load(cfg.listeners.mx.host, cfg.listeners.mx.port, "alice@example.test", sessions=1, max_messages=2)
        load.run()
        assert len(load.acked) == 2
        rows = wait_for("both messages deferred once", lambda: deferred(config_file, 2), 30)
        first, second = rows[0]["id"], rows[1]["id"]
        assert rows[0]["recipients"][0]["state"] == "pending"
        assert rows[0]["recipients"][0]["detail"].startswith("4.3.0")
        out = run_cli(config_file, "queue", "list").stdout
        assert first in out and "alice@example.test" in out and "2 message(s)" in out
        shown = run_cli(config_file, "queue", "show", first).stdout
        assert "Message-ID: <m-1@load.test>" in shown or "Message-ID: <m-2@load.test>" in shown

        # Unblock delivery, then ask the running relay to retry one message now (the backoff is an hour).
        (box_mail / "alice").unlink()
        assert "delivery attempt started" in run_cli(config_file, "queue", "retry", first).stdout
        wait_for("retried message delivered", lambda: [r["id"] for r in queue_json(config_file)] == [second], 30)
        assert run_cli(config_file, "queue", "delete", second).returncode == 0
        wait_for("deleted", lambda: queue_json(config_file) == [], 30)
        maildir_new = box_mail / "alice" / "new"
        assert len(os.listdir(maildir_new)) == 1  # the deleted one was never delivered

        bad = run_cli(config_file, "queue", "show", "nonsense", check=False)
        assert bad.returncode == 1 and "not a queue id" in bad.stderr
        gone = run_cli(config_file, "queue", "retry", second, check=False)
        assert gone.returncode == 1 and "no such message" in gone.stderr

        # flush reaches the running relay as well.
        (box_mail / "alice").rename(tmp_path / "alice-maildir")
        (box_mail / "alice").write_text("blocked\n")
        load2 = Load(cfg.listeners.mx.host, cfg.listeners.mx.port, "alice@example.test", sessions=1,
                     max_messages=1, tag="f")
        load2.run()
        wait_for("deferred", lambda: deferred(config_file, 1), 30)
        (box_mail / "alice").unlink()
        assert "started" in run_cli(config_file, "queue", "flush").stdout
        wait_for("flushed", lambda: queue_json(config_file) == [], 30)
    finally:
        relay.stop()

    # Without a relay: flush marks messages due; delete removes directly.
    (box_mail / "alice").rename(tmp_path / "alice-maildir2")
    (box_mail / "alice").write_text("blocked\n")
    relay = RelayProcess(config_file, tmp_path / "relay2.log").start(cfg)
    try:
        load3 = Load(cfg.listeners.mx.host, cfg.listeners.mx.port, "alice@example.test", sessions=1,
                     max_messages=2, tag="g")
        load3.run()
        wait_for("deferred", lambda: deferred(config_file, 2), 30)
    finally:
        relay.stop()
    ids = [r["id"] for r in queue_json(config_file)]
    assert "not running" in run_cli(config_file, "queue", "flush").stdout
    assert all(r["next_attempt"] == "now" for r in queue_json(config_file))
    assert run_cli(config_file, "queue", "delete", ids[0]).returncode == 0
    assert [r["id"] for r in queue_json(config_file)] == [ids[1]]
