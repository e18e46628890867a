"""Accounts: argon2id hashes in SQLite, identities, and passwords kept out of sight."""

from __future__ import annotations

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
    box.cli("user", "del", "bob@example.test")
    assert "bob@example.test" not in box.cli("user", "list").stdout
    # The Maildir with the special folders was created with the account and is kept.
    assert (box.maildir("bob@example.test", "Sent") / "new").is_dir()
