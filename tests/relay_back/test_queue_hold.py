"""`appliance queue hold | release`: a held message is never attempted, across a relay restart, until released."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.box import run_cli
from tests.helpers.wait import wait_for
from tests.relay_back.conftest import StuckQueue

pytestmark = pytest.mark.peers


def test_held_message_waits_across_a_restart_until_released(stuck_queue: StuckQueue, tmp_path: Path) -> None:
    stuck, config_file = stuck_queue, stuck_queue.config_file
    # Three messages that cannot be delivered yet: alice's Maildir path is blocked by a plain file.
    relay = stuck.relay(tmp_path / "relay.log")
    try:
        m1, m2, m3 = sorted(stuck.send(3))
        # Held through the running relay.
        out = run_cli(config_file, "queue", "hold", m1).stdout
        assert out.strip() == f"{m1}: held (not attempted until released)"
        assert run_cli(config_file, "queue", "hold", m1).stdout.strip() == f"{m1}: already held"
        listed = run_cli(config_file, "queue", "list").stdout
        assert f"{m1} " in listed and listed.split(m1, 1)[1].split("\n", 1)[0].endswith("attempts 1, held")
        q = stuck.queue()
        assert q[m1]["held"] and q[m1]["next_attempt"] == "held" and not q[m2]["held"]
        refused = run_cli(config_file, "queue", "retry", m1, check=False)
        assert refused.returncode == 1 and "held; release it" in refused.stderr
        bad = run_cli(config_file, "queue", "release", m2, check=False)
        assert bad.returncode == 1 and "not held" in bad.stderr
    finally:
        relay.stop()

    # With the relay stopped: everything due now, then m2 held too (only on disk: the log).
    assert "2 message(s) will be attempted" in run_cli(config_file, "queue", "flush").stdout  # m1 is held
    assert "held" in run_cli(config_file, "queue", "hold", m2).stdout
    stuck.unblock()  # deliverable from now on
    relay = stuck.relay(tmp_path / "relay2.log")
    try:
        # m2 and m3 are both due at the start (m2 sorts first); only m3 may be delivered.
        wait_for("the one message not held delivered", lambda: sorted(stuck.queue()) == [m1, m2], 60, 0.5)
        q = stuck.queue()
        assert q[m2]["held"] and q[m2]["attempts"] == 1 and q[m1]["attempts"] == 1  # never attempted again
        assert len(os.listdir(stuck.box_mail / "alice" / "new")) == 1
        assert "delivery attempt started" in run_cli(config_file, "queue", "release", m2).stdout
        wait_for("the released message delivered", lambda: list(stuck.queue()) == [m1], 60, 0.5)
        assert len(os.listdir(stuck.box_mail / "alice" / "new")) == 2
        assert stuck.queue()[m1]["held"]
        assert "delivery attempt started" in run_cli(config_file, "queue", "release", m1).stdout
        wait_for("the last message delivered", lambda: stuck.queue() == {}, 60, 0.5)
        assert len(os.listdir(stuck.box_mail / "alice" / "new")) == 3
    finally:
        relay.stop()
    gone = run_cli(config_file, "queue", "hold", m1, check=False)
    assert gone.returncode == 1 and "no such message" in gone.stderr
