"""`appliance queue hold | release`: a held message is never attempted, across a relay restart, until released."""

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


def queue_json(config_file: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    return {r["id"]: r for r in json.loads(run_cli(config_file, "queue", "list", "--json").stdout)}


def deferred(config_file: Path, n: int) -> dict[str, dict] | None:  # type: ignore[type-arg]
    """The queue once it holds N messages that have each been tried once."""
    q = queue_json(config_file)
    return q if len(q) == n and all(r["attempts"] == 1 for r in q.values()) else None


def test_held_message_waits_across_a_restart_until_released(devbox: tuple[Path, Config], tmp_path: Path) -> None:
    config_file, cfg = devbox
    cfg = tune(config_file, relay={"retry_initial": 3600, "retry_max": 3600})
    raise_member_limits(cfg)
    # Three messages that cannot be delivered yet: alice's Maildir path is blocked by a plain file.
    box_mail = Path(cfg.paths.mail_dir) / "example.test"
    box_mail.mkdir(parents=True, exist_ok=True)
    (box_mail / "alice").write_text("blocked\n")
    write_registry(cfg, [])
    relay = RelayProcess(config_file, tmp_path / "relay.log").start(cfg)
    try:
        load = Load(cfg.listeners.mx.host, cfg.listeners.mx.port, "alice@example.test", sessions=1, max_messages=3)
        load.run()
        assert len(load.acked) == 3
        rows = wait_for("three messages deferred once", lambda: deferred(config_file, 3), 60, 0.5)
        m1, m2, m3 = sorted(rows)  # type: ignore[arg-type]
        # Held through the running relay.
        out = run_cli(config_file, "queue", "hold", m1).stdout
        assert out.strip() == f"{m1}: held (not attempted until released)"
        assert run_cli(config_file, "queue", "hold", m1).stdout.strip() == f"{m1}: already held"
        listed = run_cli(config_file, "queue", "list").stdout
        assert f"{m1} " in listed and listed.split(m1, 1)[1].split("\n", 1)[0].endswith("attempts 1, held")
        q = queue_json(config_file)
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
    (box_mail / "alice").unlink()  # deliverable from now on
    relay = RelayProcess(config_file, tmp_path / "relay2.log").start(cfg)
    try:
        # m2 and m3 are both due at the start (m2 sorts first); only m3 may be delivered.
        wait_for("the one message not held delivered", lambda: sorted(queue_json(config_file)) == [m1, m2], 60, 0.5)
        q = queue_json(config_file)
        assert q[m2]["held"] and q[m2]["attempts"] == 1 and q[m1]["attempts"] == 1  # never attempted again
        assert len(os.listdir(box_mail / "alice" / "new")) == 1
        assert "delivery attempt started" in run_cli(config_file, "queue", "release", m2).stdout
        wait_for("the released message delivered", lambda: list(queue_json(config_file)) == [m1], 60, 0.5)
        assert len(os.listdir(box_mail / "alice" / "new")) == 2
        assert queue_json(config_file)[m1]["held"]
        assert "delivery attempt started" in run_cli(config_file, "queue", "release", m1).stdout
        wait_for("the last message delivered", lambda: queue_json(config_file) == {}, 60, 0.5)
        assert len(os.listdir(box_mail / "alice" / "new")) == 3
    finally:
        relay.stop()
    gone = run_cli(config_file, "queue", "hold", m1, check=False)
    assert gone.returncode == 1 and "no such message" in gone.stderr
