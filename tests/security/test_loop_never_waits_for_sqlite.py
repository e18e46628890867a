"""The relay's event loop never waits for the accounts database's write lock.

The abuse brake holds an account with a SQLite write. If that write ran in the
event loop, a lock held elsewhere (`appliance user ...`, a login rehashing a
password, a backup) would freeze every SMTP session for up to the busy timeout.
Here the lock is held by another connection while the brake trips: the relay
must keep answering new sessions, and the hold must be written once the lock is free.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from appliance.accounts import AccountStore
from tests.relay_front.relay import PASSWORD, RawSMTP, Relay, make_relay

pytestmark = pytest.mark.peers

BRAKE_NEW = 4
MALLORY = "mallory@example.test"


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    r = make_relay(tmp_path, name="brake")
    data = tomllib.loads(r.config_file.read_text())
    data["limits"] = {"abuse_brake": {"new_recipients": BRAKE_NEW, "window": 3600}}
    r.config_file.write_text(tomli_w.dumps(data))
    store = AccountStore(r.cfg.paths.accounts_db)
    store.add(MALLORY, PASSWORD)
    store.close()
    r.start()
    yield r
    r.stop()


def _greets(relay: Relay) -> str:
    c = RawSMTP("127.0.0.1", relay.port("submission"), timeout=10)
    try:
        return c.greeting
    finally:
        c.close()


def test_brake_hold_while_the_database_is_locked(relay: Relay) -> None:
    lock = sqlite3.connect(relay.cfg.paths.accounts_db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        victims = ",".join(f"victim{i}@elsewhere.example" for i in range(BRAKE_NEW))
        send = subprocess.Popen(
            ["swaks", "--server", relay.server("submission"), "--tls", "--auth", "PLAIN", "--auth-user", MALLORY,
             "--auth-password", PASSWORD, "--from", MALLORY, "--to", victims, "--timeout", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            # While the brake trips (and tries to write the hold), new sessions are still served.
            probes = 0
            while send.poll() is None and probes < 10:
                g = _greets(relay)
                assert g.startswith("220"), f"relay stalled while the accounts database was locked: {g!r}"
                probes += 1
            out, _ = send.communicate(timeout=90)
        finally:
            if send.poll() is None:
                send.kill()
                send.wait()
        assert "250 2.0.0" in out, out
        assert _greets(relay).startswith("220")  # and still, with the lock held
        with sqlite3.connect(relay.cfg.paths.accounts_db) as db:  # a plain reader: WAL lets it read now
            (held,) = db.execute("SELECT held FROM accounts WHERE address = ?", (MALLORY,)).fetchone()
        assert not held  # not written yet: the lock is still held
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    deadline = time.monotonic() + 40
    store = AccountStore(relay.cfg.paths.accounts_db)
    try:
        while not store.get(MALLORY).held:
            assert time.monotonic() < deadline, "the hold was never written after the lock was released"
            time.sleep(0.2)
    finally:
        store.close()
