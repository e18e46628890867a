"""A member that drifts from the code is suspended by `probe-all`, and its mail is then deferred, not bounced.

Two dev boxes on loopback (A on 127.0.0.2, B on 127.0.0.3) and the probe on 127.0.0.9,
all in one consortium whose registry (a real TUF repository, file:// URL) lists the probe.
B is admitted with a passing probe report; later B's operator removes its limit on
member connections, the next `probe-all --suspend-on-fail --publish` suspends B, and A
then answers B's relay with a temporary 421 and holds its own customers' mail for B.
"""

from __future__ import annotations

import smtplib
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from tests.conftest import require
from tests.helpers.box import Box, make_box, pids_under
from tests.helpers.wait import wait_for
from tests.practice.peers import PROBE_MEMBER, PROBE_SOURCE, probe
from tests.registry.conftest import (
    greeting_verdict,
    make_operator,
    point_box,
    relay_running,
    sync_in_process,
)

pytestmark = pytest.mark.peers


def _sync(*boxes: Box) -> None:
    for b in boxes:
        rc, _, err = sync_in_process(b)
        assert rc == 0, err


def _remove_member_limit(box: Box) -> None:
    """B's operator 'removes its limits': a member connection cap far above the code's bound."""
    data = tomllib.loads(box.config_file.read_text())
    data.setdefault("limits", {})["member_default_connections"] = 1000
    box.config_file.write_text(tomli_w.dumps(data))


def test_drifted_member_is_suspended_and_its_mail_deferred(tmp_path: Path) -> None:
    require("swaks")
    op = make_operator(tmp_path)
    a = make_box(tmp_path, domain="a.test", host="127.0.0.2", name="a")
    b = make_box(tmp_path, domain="b.test", host="127.0.0.3", name="b")
    a_mx = f"127.0.0.2:{a.cfg.listeners.mx.port}"
    b_mx = f"127.0.0.3:{b.cfg.listeners.mx.port}"
    op.cli("add-member", "--without-probe", *PROBE_MEMBER)
    op.cli("add-member", "--without-probe", "--id", "a", "--domain", "a.test", "--relay", f"{a_mx}=127.0.0.2/32",
           "--pin", str(a.cfg.tls.cert))
    op.cli("publish")
    for box in (a, b):  # B, a candidate, already follows the consortium's public registry
        point_box(box, op.public.as_uri(), op.pinned_root)
        box.add_user("abuse")
    _sync(a, b)
    alice = a.add_user("alice")
    b.add_user("tester", "tester password")
    try:
        with relay_running(a, up=False):
            with relay_running(b, up=False):
                probe(b_mx, "--domain", "b.test", "--submission", str(b.cfg.listeners.submission.port),
                      "--account", "tester@b.test", "--password-stdin", "--out", str(tmp_path / "b.json"),
                      password="tester password", check_rc=0)
            op.cli("add-member", "--id", "b", "--domain", "b.test", "--relay", f"{b_mx}=127.0.0.3/32",
                   "--pin", str(b.cfg.tls.cert), "--probe-report", str(tmp_path / "b.json"))
            op.cli("publish")
            _sync(a, b)

            with relay_running(b, up=False):
                rc, out, _ = op.cli("probe-all", "--source", PROBE_SOURCE, "--suspend-on-fail", "--publish")
                assert rc == 0 and f"a {a_mx}: ok" in out and f"b {b_mx}: ok" in out, out

            _remove_member_limit(b)
            with relay_running(b, up=False):
                rc, out, _ = op.cli("probe-all", "--source", PROBE_SOURCE, "--suspend-on-fail", "--publish", check=False)
            assert rc == 1, out
            assert f"b {b_mx}: FAILED rate-limit" in out and "b: suspended" in out and f"a {a_mx}: ok" in out, out
            status = {m["id"]: m["status"] for m in op.draft()["members"]}
            assert status == {"practice-probe": "active", "a": "active", "b": "suspended"}, status
            record = next(m for m in op.draft()["members"] if m["id"] == "b")["practice"]
            assert record["last_probe"]["failed"] == ["rate-limit"] and "report_sha256" in record, record

            _sync(a, b)
            # B's relay is deferred with a temporary reply (it keeps its queue and retries) ...
            wait_for("A deferring suspended B", lambda: greeting_verdict(a, "127.0.0.3", alice) == "421 4.7.1", 60)
            # ... and A holds its own customer's mail for B instead of bouncing it.
            with smtplib.SMTP("127.0.0.2", a.cfg.listeners.submission.port, timeout=30) as s:
                s.starttls(context=a.client_tls())
                s.login(alice, a.passwords[alice])
                s.sendmail(alice, ["abuse@b.test"], f"From: <{alice}>\r\nTo: <abuse@b.test>\r\n"
                           "Subject: while b is suspended\r\n\r\nheld, not bounced\r\n")
            time.sleep(3)  # several retry rounds
            assert "abuse@b.test" in a.cli("queue", "list").stdout
            inbox = a.maildir(alice) / "new"
            assert not list(inbox.glob("*")), "a suspension must not bounce customers' mail"
            assert not list((b.maildir("abuse@b.test") / "new").glob("*"))
    finally:
        for box in (a, b):
            box.down()
        leaked = pids_under(tmp_path)
        assert not leaked, f"processes left behind: {leaked}"
