"""Accounts: argon2id hashes in SQLite, identities, and passwords kept out of sight."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.synchronize
import sqlite3
from pathlib import Path

import pytest

from appliance.accounts import AccountError, AccountStore, LimitOverride
from tests.helpers.box import Box

PW = "s3cret-horse-battery"


def test_add_authenticate_and_hash(tmp_path: Path) -> None:
    s = AccountStore(tmp_path / "a.db")
    s.add("Alice@Example.Test", PW)
    assert s.authenticate("alice@example.test", PW) is not None
    assert s.authenticate("alice@example.test", PW + "x") is None
    assert s.authenticate("nobody@example.test", PW) is None
    stored = sqlite3.connect(tmp_path / "a.db").execute("SELECT password FROM accounts").fetchone()[0]
    assert stored.startswith("$argon2id$") and PW not in stored
    mode = sqlite3.connect(tmp_path / "a.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def _open_at_once(path: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait(30)
    AccountStore(path).get("nobody@example.test")  # opening it is what failed: schema and WAL switch


def _open_all_at_once(path: Path, n: int = 6) -> list[int]:
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter, like each supervised service
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=_open_at_once, args=(str(path), barrier)) for _ in range(n)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(90)
    return [proc.exitcode for proc in procs]


def test_services_opening_a_new_accounts_file_at_once_all_start(tmp_path: Path) -> None:
    """On a new box the relay, the access service and the console all create the file during `appliance
    up`; before the fix one lost with `duplicate column name` or `database is locked` and went BACKOFF."""
    for attempt in range(3):
        path = tmp_path / f"new-{attempt}" / "accounts.sqlite3"
        assert _open_all_at_once(path) == [0] * 6
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        columns = {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(accounts)")}
        assert {"quota_storage", "admin", "home"} <= columns


def test_an_old_accounts_file_is_migrated_once_by_racing_openers(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript("""CREATE TABLE accounts (address TEXT PRIMARY KEY, password TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0, limit_class TEXT NOT NULL DEFAULT 'default', per_minute REAL,
        burst INTEGER, per_day INTEGER, held INTEGER NOT NULL DEFAULT 0, held_reason TEXT NOT NULL DEFAULT '',
        held_since REAL, created REAL NOT NULL);
        CREATE TABLE identities (identity TEXT PRIMARY KEY, address TEXT NOT NULL);
        INSERT INTO accounts (address, password, created) VALUES ('old@example.test', 'x', 0);""")
    old.close()
    assert _open_all_at_once(path) == [0] * 6
    store = AccountStore(path)
    account = store.get("old@example.test")
    assert account is not None and account.home == "" and not account.admin


def test_identities_and_disable(tmp_path: Path) -> None:
    s = AccountStore(tmp_path / "a.db")
    s.add("alice@example.test", PW)
    s.add_alias("alice@example.test", "sales@example.test")
    a = s.get("alice@example.test")
    assert a and a.may_send_as("SALES@example.test") and not a.may_send_as("bob@example.test")
    assert s.owner_of("sales@example.test") == "alice@example.test"
    with pytest.raises(AccountError):
        s.add("sales@example.test", PW)
    s.set_disabled("alice@example.test", True)
    assert s.authenticate("alice@example.test", PW) is None
    s.set_limits("alice@example.test", LimitOverride(10, 5, 100))
    assert s.get("alice@example.test").override == LimitOverride(10, 5, 100)  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", ["a\r\nb@example.test", "user%other@example.test", "a!b@example.test",
                                 '"a@b"@example.test', "@relay:user@example.test", "noat", "a@b@example.test"])
def test_bad_addresses_refused(tmp_path: Path, bad: str) -> None:
    s = AccountStore(tmp_path / "a.db")
    with pytest.raises(ValueError):
        s.add(bad, PW)


def test_cli_user_lifecycle_never_shows_password(box: Box) -> None:
    out = box.cli("user", "add", "bob@example.test", "--password-stdin", input=PW + "\n")
    assert PW not in out.stdout + out.stderr
    box.cli("user", "alias", "add", "bob@example.test", "robert@example.test")
    listing = box.cli("user", "list").stdout
    assert "bob@example.test" in listing and "robert@example.test" in listing and PW not in listing
    box.cli("user", "passwd", "bob@example.test", "--password-stdin", input="another-password\n")
    s = AccountStore(box.cfg.paths.accounts_db)
    assert s.authenticate("bob@example.test", "another-password")
    dup = box.cli("user", "add", "bob@example.test", "--password-stdin", input=PW + "\n", check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr and PW not in dup.stderr
    other = box.cli("user", "add", "eve@elsewhere.test", "--password-stdin", input=PW + "\n", check=False)
    assert other.returncode == 1 and "not one of this box's domains" in other.stderr
    box.cli("user", "limits", "bob@example.test", "--per-minute", "5", "--burst", "2", "--per-day", "50")
    assert '"per_minute": 5.0' in box.cli("user", "list", "--json").stdout
    for bad in ("nan", "inf", "0"):  # NaN compares false with everything: it once got through
        r = box.cli("user", "limits", "bob@example.test", "--per-minute", bad, "--burst", "2", check=False)
        assert r.returncode == 1 and "limits must be positive" in r.stderr, (bad, r.stderr)
    assert '"per_minute": 5.0' in box.cli("user", "list", "--json").stdout
    # show --json is the account as list --json has it, without the quota usage (one builder for both).
    listed = {a["address"]: a for a in json.loads(box.cli("user", "list", "--json").stdout)}
    shown = json.loads(box.cli("user", "show", "bob@example.test", "--json").stdout)
    assert listed["bob@example.test"] == {**shown, "quota": listed["bob@example.test"]["quota"]}
    assert shown["identities"] == ["robert@example.test"] and shown["home_is_this_box"]
    for verb in (("show",), ("passwd", "--password-stdin"), ("limits", "--clear"), ("quota",)):
        r = box.cli("user", verb[0], "nobody@example.test", *verb[1:], input="x\n", check=False)
        assert r.returncode == 1 and "no account nobody@example.test" in r.stderr, (verb, r.stderr)
    box.cli("user", "del", "bob@example.test")
    assert "bob@example.test" not in box.cli("user", "list").stdout
    # The Maildir with the special folders was created with the account and is kept.
    assert (box.maildir("bob@example.test", "Sent") / "new").is_dir()
