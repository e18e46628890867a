"""Two dev boxes and a registry server on loopback: suspending a member shuts it out within one poll.

Box A listens on 127.0.0.2, box B on 127.0.0.3; B's mail to A comes from B's
own address (swaks --local-interface), as B's relay's would. The registry is
served over HTTP by `appliance registry serve`; both boxes poll it every second.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.registry.repo import OperatorRepo
from tests.conftest import require
from tests.helpers.box import Box, make_box, pids_under
from tests.helpers.wait import wait_for
from tests.registry.conftest import (
    Operator,
    add_box_member,
    greeting_verdict,
    make_operator,
    point_box,
    relay_running,
    swaks,
)


def publish_and_wait_one_poll(op: Operator, *boxes: Box) -> int:
    """Publish, then check that the FIRST poll each box starts afterwards already has the new version."""
    op.cli("publish")
    published_at = time.time()
    version = OperatorRepo(op.repo_dir).published().targets  # type: ignore[union-attr]
    for box in boxes:
        state_file = box.cfg.registry_dir / "state.json"

        def polled_since(state_file: Path = state_file) -> bool:
            try:
                st = json.loads(state_file.read_text())
            except ValueError:
                return False
            return dt.datetime.fromisoformat(st["last_attempt"].replace("Z", "+00:00")).timestamp() > published_at

        wait_for("a poll after publish", polled_since, 30, interval=0.2)
        st = json.loads(state_file.read_text())
        assert st["version"] == version, f"{box.dir}: first poll after publish has version {st['version']}: {st}"
    return version


@pytest.mark.peers
def test_member_suspended_and_reactivated_across_two_boxes(tmp_path: Path) -> None:
    require("swaks")
    op = make_operator(tmp_path)
    a = make_box(tmp_path, domain="a.test", host="127.0.0.2", name="a")
    b = make_box(tmp_path, domain="b.test", host="127.0.0.3", name="b")
    server = subprocess.Popen([sys.executable, "-m", "appliance", "registry", "serve", str(op.repo_dir),
                               "--host", "127.0.0.1", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split(" at ")[1].strip()
        add_box_member(op, a)
        add_box_member(op, b)
        op.cli("publish")
        for box in (a, b):
            point_box(box, url, op.pinned_root, poll_interval=1)
            box.cli("registry", "sync", "--once")
        alice = a.add_user("alice")
        b_address = b.cfg.listeners.mx.host
        with relay_running(a), relay_running(b):
            out = swaks(a, b_address, alice, "--header", "Subject: while active")
            assert "250 2.0.0" in out and "queued" in out, out
            wait_for("delivery to alice while B is active",
                     lambda: any(b"while active" in p.read_bytes() for p in (a.maildir(alice) / "new").glob("*")))

            op.cli("suspend", "b")
            publish_and_wait_one_poll(op, a, b)
            # The relay swaps in the new snapshot when registry.json's mtime changes (it checks every 2 s).
            wait_for("A deferring suspended B", lambda: greeting_verdict(a, b_address, alice) == "421 4.7.1", 60)
            assert b.status()["registry"]["alarm"] is None

            op.cli("reactivate", "b")
            publish_and_wait_one_poll(op, a, b)
            wait_for("A accepting B again", lambda: greeting_verdict(a, b_address, alice) == "accepted", 60)
            out = swaks(a, b_address, alice, "--header", "Subject: after reactivation")
            assert "250 2.0.0" in out and "queued" in out, out
            wait_for("delivery to alice after reactivation",
                     lambda: any(b"after reactivation" in p.read_bytes() for p in (a.maildir(alice) / "new").glob("*")))
    finally:
        server.terminate()
        server.wait(timeout=30)
        for box in (a, b):
            box.down()
        leaked = pids_under(tmp_path)
        assert not leaked, f"processes left behind: {leaked}"
