"""`appliance queue list | show | retry | delete | flush` against a spool with and without a running relay."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.box import run_cli
from tests.helpers.wait import wait_for
from tests.relay_back.conftest import StuckQueue

pytestmark = pytest.mark.peers


def test_queue_commands(stuck_queue: StuckQueue, tmp_path: Path) -> None:
    stuck, config_file = stuck_queue, stuck_queue.config_file
    # Two messages that cannot be delivered yet: alice's Maildir path is blocked by a plain file.
    relay = stuck.relay(tmp_path / "relay.log")
    try:
        rows = list(stuck.send(2).values())
        first, second = rows[0]["id"], rows[1]["id"]
        assert rows[0]["recipients"][0]["state"] == "pending"
        assert rows[0]["recipients"][0]["detail"].startswith("4.3.0")
        out = run_cli(config_file, "queue", "list").stdout
        assert first in out and "alice@example.test" in out and "2 message(s)" in out
        shown = run_cli(config_file, "queue", "show", first).stdout
        assert "Message-ID: <m-1@load.test>" in shown or "Message-ID: <m-2@load.test>" in shown

        # Unblock delivery, then ask the running relay to retry one message now (the backoff is an hour).
        stuck.unblock()
        assert "delivery attempt started" in run_cli(config_file, "queue", "retry", first).stdout
        wait_for("retried message delivered", lambda: list(stuck.queue()) == [second], 30)
        assert run_cli(config_file, "queue", "delete", second).returncode == 0
        wait_for("deleted", lambda: stuck.queue() == {}, 30)
        maildir_new = stuck.box_mail / "alice" / "new"
        assert len(os.listdir(maildir_new)) == 1  # the deleted one was never delivered

        bad = run_cli(config_file, "queue", "show", "nonsense", check=False)
        assert bad.returncode == 1 and "not a queue id" in bad.stderr
        gone = run_cli(config_file, "queue", "retry", second, check=False)
        assert gone.returncode == 1 and "no such message" in gone.stderr

        # flush reaches the running relay as well.
        (stuck.box_mail / "alice").rename(tmp_path / "alice-maildir")
        stuck.block()
        stuck.send(1, tag="f")
        stuck.unblock()
        assert "started" in run_cli(config_file, "queue", "flush").stdout
        wait_for("flushed", lambda: stuck.queue() == {}, 30)
    finally:
        relay.stop()

    # Without a relay: flush marks messages due; delete removes directly.
    (stuck.box_mail / "alice").rename(tmp_path / "alice-maildir2")
    stuck.block()
    relay = stuck.relay(tmp_path / "relay2.log")
    try:
        stuck.send(2, tag="g")
    finally:
        relay.stop()
    ids = list(stuck.queue())
    assert "not running" in run_cli(config_file, "queue", "flush").stdout
    assert all(r["next_attempt"] == "now" for r in stuck.queue().values())
    assert run_cli(config_file, "queue", "delete", ids[0]).returncode == 0
    assert list(stuck.queue()) == [ids[1]]
