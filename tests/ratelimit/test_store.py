"""The limiter's store: decisions from memory, changes written behind, nothing lost across a lock or a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from appliance.ratelimit.clock import ManualClock
from appliance.ratelimit.store import (
    KNOWN_LOGIN_ADDRESSES,
    LimitStore,
    mark_brake_reset,
    read_daily_count,
)

ALICE = "acct:alice@example.test"


def _rows(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def test_changes_reach_the_file_without_a_close(tmp_path: Path, clock: ManualClock) -> None:
    db = tmp_path / "limits.sqlite3"
    store = LimitStore(db, clock.time)
    try:
        assert store.add_daily(ALICE, clock.time()) == 1
        assert store.add_daily(ALICE, clock.time()) == 2
        assert store.learn_recipients("alice@example.test", ["Bob@x.example", "bob@x.example"], clock.time()) == 1
        store.flush()
        assert read_daily_count(db, ALICE, clock.time()) == 2  # what `appliance user limits` shows
        assert len(_rows(db, "SELECT * FROM known_recipients")) == 1
    finally:
        store.close()


def test_a_locked_file_delays_writes_but_loses_nothing(tmp_path: Path, clock: ManualClock) -> None:
    db = tmp_path / "limits.sqlite3"
    store = LimitStore(db, clock.time)
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        for n in range(1, 6):  # answered from memory while the file is locked
            assert store.add_daily(ALICE, clock.time()) == n
        store.remember_login_address("alice@example.test", "192.0.2.1", clock.time())
        assert store.knows_login_address("alice@example.test", "192.0.2.1", clock.time())
        assert store.daily_count(ALICE, clock.time()) == 5
        assert read_daily_count(db, ALICE, clock.time()) == 0  # nothing could be written yet
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    store.flush()
    assert read_daily_count(db, ALICE, clock.time()) == 5
    assert _rows(db, "SELECT address FROM login_addresses") == [("192.0.2.1",)]
    store.close()


def test_known_login_addresses_are_capped_in_memory_and_on_disk(tmp_path: Path, clock: ManualClock) -> None:
    db = tmp_path / "limits.sqlite3"
    store = LimitStore(db, clock.time)
    for i in range(KNOWN_LOGIN_ADDRESSES + 8):
        store.remember_login_address("alice@example.test", f"192.0.2.{i}", clock.time())
        clock.advance(1)
    store.close()
    kept = {r[0] for r in _rows(db, "SELECT address FROM login_addresses")}
    assert kept == {f"192.0.2.{i}" for i in range(8, KNOWN_LOGIN_ADDRESSES + 8)}  # the newest 32
    again = LimitStore(db, clock.time)
    assert again.knows_login_address("alice@example.test", "192.0.2.39", clock.time())
    assert not again.knows_login_address("alice@example.test", "192.0.2.0", clock.time())
    again.close()


def test_a_reset_written_by_another_process_is_picked_up(tmp_path: Path, clock: ManualClock) -> None:
    db = tmp_path / "limits.sqlite3"
    store = LimitStore(db, clock.time)
    try:
        assert store.brake_reset_at("alice@example.test") == 0.0
        mark_brake_reset(db, "alice@example.test", 1234.5)  # `appliance user release`
        store.flush()  # one writer cycle: it notices the other connection's commit
        assert store.brake_reset_at("alice@example.test") == 1234.5
    finally:
        store.close()


def test_an_unreadable_file_is_refused_naming_it(tmp_path: Path, clock: ManualClock) -> None:
    db = tmp_path / "limits.sqlite3"
    db.write_bytes(b"this is not a database" * 100)
    try:
        LimitStore(db, clock.time)
    except sqlite3.DatabaseError as exc:
        assert str(db) in str(exc)
    else:
        raise AssertionError("a corrupt limits.sqlite3 was accepted")
