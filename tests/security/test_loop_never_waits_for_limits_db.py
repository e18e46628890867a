"""The relay's event loop never waits for the limiter database (`limits.sqlite3`).

Every submission reads and changes the limiter's persistent state: the daily
quota count, the addresses the account logged in from (the per-account AUTH
limit), the abuse brake's known recipients. If those SQLite calls ran in the
event loop, a write lock held elsewhere (a backup, `sqlite3` in a shell, a stuck
process) would freeze every SMTP session for up to the busy timeout. Here
another connection holds the write lock while a customer submits: the message
must be accepted, other clients must get their greeting and EHLO answered while
the lock is still held, and the counts must reach the file once it is free.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from appliance.accounts import AccountStore
from appliance.ratelimit.store import limits_db
from tests.helpers.box import run_cli
from tests.relay_front.relay import PASSWORD, RawSMTP, Relay, make_relay

pytestmark = pytest.mark.peers

CAROL = "carol@example.test"
DAILY = 5


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    if shutil.which("swaks") is None:
        pytest.fail("missing test peer swaks: run `make test` (it installs it)")
    r = make_relay(tmp_path, name="limitsdb")
    data = tomllib.loads(r.config_file.read_text())
    data["limits"] = {"abuse_brake": {"new_recipients": 50, "window": 3600}}
    r.config_file.write_text(tomli_w.dumps(data))
    store = AccountStore(r.cfg.paths.accounts_db)
    store.add(CAROL, PASSWORD)
    store.close()
    run_cli(r.config_file, "user", "limits", CAROL, "--per-minute", "600", "--burst", "100",
            "--per-day", str(DAILY))
    r.start()
    yield r
    r.stop()


def _answers(relay: Relay) -> None:
    """A new client gets its greeting and its EHLO answered."""
    c = RawSMTP("127.0.0.1", relay.port("submission"), timeout=10)
    try:
        assert c.greeting.startswith("220"), c.greeting
        assert c.cmd("EHLO probe.example").startswith("250"), "EHLO not answered"
    finally:
        c.close()


def _persisted(relay: Relay) -> tuple[int, int]:
    """What limits.sqlite3 holds for carol: today's count (any day) and known login addresses."""
    with sqlite3.connect(limits_db(relay.cfg), timeout=10) as db:  # a plain reader: WAL lets it read
        count = db.execute("SELECT COALESCE(SUM(count), 0) FROM daily WHERE key = ?", (f"acct:{CAROL}",)).fetchone()
        logins = db.execute("SELECT COUNT(*) FROM login_addresses WHERE account = ?", (CAROL,)).fetchone()
    return int(count[0]), int(logins[0])


def test_submission_while_the_limits_database_is_locked(relay: Relay) -> None:
    lock = sqlite3.connect(limits_db(relay.cfg), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # another writer holds the lock
    try:
        send = subprocess.Popen(
            ["swaks", "--server", relay.server("submission"), "--tls", "--auth", "PLAIN", "--auth-user", CAROL,
             "--auth-password", PASSWORD, "--from", CAROL, "--to", "friend@elsewhere.example", "--timeout", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            probes = 0
            while send.poll() is None and probes < 10:  # while carol's session runs, others are served
                _answers(relay)
                probes += 1
            out, _ = send.communicate(timeout=90)
        finally:
            if send.poll() is None:
                send.kill()
                send.wait()
        assert "250 2.0.0" in out, out  # accepted and counted, with the lock still held
        _answers(relay)  # and still served, with the lock still held
        assert _persisted(relay) == (0, 0)  # nothing could be written yet
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    deadline = time.monotonic() + 40
    while _persisted(relay) != (1, 1):
        assert time.monotonic() < deadline, f"not written after the lock was released: {_persisted(relay)}"
        time.sleep(0.2)
    shown = run_cli(relay.config_file, "user", "limits", CAROL).stdout
    assert "today (UTC): 1 message(s) accepted" in shown, shown


def _submit(relay: Relay, subject: str) -> str:
    return subprocess.run(
        ["swaks", "--server", relay.server("submission"), "--tls", "--auth", "PLAIN", "--auth-user", CAROL,
         "--auth-password", PASSWORD, "--from", CAROL, "--to", "friend@elsewhere.example",
         "--header", f"Subject: {subject}", "--timeout", "20"],
        capture_output=True, text=True, timeout=60).stdout


def test_written_counts_survive_kill_9(relay: Relay) -> None:
    for i in range(2):
        assert "250 2.0.0" in _submit(relay, f"before-{i}")
    deadline = time.monotonic() + 20
    while _persisted(relay)[0] != 2:  # the writer's batch reached the file
        assert time.monotonic() < deadline, f"counts never written: {_persisted(relay)}"
        time.sleep(0.1)
    assert relay.proc is not None
    relay.proc.kill()  # no chance to flush anything
    relay.proc.wait(timeout=10)
    relay.proc = None
    relay.start()
    for i in range(DAILY - 2):
        assert "250 2.0.0" in _submit(relay, f"after-{i}")
    refused = _submit(relay, "one-too-many")
    assert "450 4.7.1" in refused and "Daily message quota" in refused, refused
