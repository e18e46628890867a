"""Account Maildir paths (issue 21 item 1) and mailbox directory names: one-to-one, never nested."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.addresses import AddressError, normalize_address
from appliance.mailstore import MailStore, maildir_path
from appliance.mailstore.names import check_name, decode_mutf7, dir_name, name_of_dir
from appliance.mailstore.paths import account_maildir, overlapping

ATOM = string.ascii_letters + string.digits + "!#$&'*+/=?^_`{|}~.-"


def _address(local: str) -> str | None:
    try:
        return normalize_address(f"{local}@example.test")
    except AddressError:
        return None


@settings(max_examples=500, deadline=None)
@given(st.lists(st.text(alphabet=ATOM, min_size=1, max_size=20), min_size=2, max_size=8))
def test_no_account_path_inside_another(locals_: list[str]) -> None:
    addresses = {a for a in map(_address, locals_) if a}
    mail_dir = Path("/srv/mail")
    paths = {maildir_path(mail_dir, a) for a in addresses}
    assert len(paths) == len(addresses)  # one-to-one
    for p in paths:
        assert p.parent == mail_dir / "example.test"  # exactly one level below the domain
        assert p.name not in (".", "..") and not p.name.startswith(".") and "/" not in p.name
    assert overlapping(mail_dir, addresses) == []


def test_examples() -> None:
    m = Path("/m")
    assert maildir_path(m, "Alice@Example.TEST") == m / "example.test" / "alice"  # unchanged for ordinary ones
    assert maildir_path(m, "alice/.Sent@example.test") == m / "example.test" / "alice%2F.sent"
    assert maildir_path(m, "a.b+tag@example.test") == m / "example.test" / "a.b+tag"
    with pytest.raises(AddressError):
        maildir_path(m, "../x@example.test")
    with pytest.raises(AddressError):
        maildir_path(m, "x@../../etc")


def test_old_box_moved_on_first_use_unless_it_is_another_accounts_folder(tmp_path: Path) -> None:
    old = tmp_path / "example.test" / "team" / "sales"  # where the old mapping put team/sales@
    for sub in ("cur", "new", "tmp"):
        (old / sub).mkdir(parents=True)
    (old / "new" / "m1").write_bytes(b"Subject: x\n\n")
    new = account_maildir(tmp_path, "team/sales@example.test")
    assert new == tmp_path / "example.test" / "team%2Fsales"
    assert (new / "new" / "m1").exists() and not old.exists()
    # alice/.sent@ used to be alice's folder "sent": it stays alice's.
    alice = tmp_path / "example.test" / "alice"
    for sub in ("cur", "new", "tmp"):
        (alice / ".sent" / sub).mkdir(parents=True)
        (alice / sub).mkdir(parents=True, exist_ok=True)
    p = account_maildir(tmp_path, "alice/.sent@example.test")
    assert p == tmp_path / "example.test" / "alice%2F.sent" and not p.exists()
    assert (alice / ".sent" / "cur").is_dir()


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=30).filter(lambda s: "\x00" not in s))
def test_mailbox_dir_names_round_trip(name: str) -> None:
    try:
        canonical = check_name(name)
    except Exception:
        return
    if canonical == "INBOX":
        return
    d = dir_name(canonical)
    assert d.startswith(".") and "/" not in d and d.isascii() and d not in (".", "..")
    assert name_of_dir(d) == canonical
    assert decode_mutf7(d[1:]) == canonical


def test_atom_special_names_on_disk(tmp_path: Path) -> None:
    s = MailStore.open(tmp_path / "u")
    for n in ["#news", "a&b", "~x", "a/b", "Entwürfe"]:
        s.create(n)
    assert sorted(p.name for p in (tmp_path / "u").iterdir() if p.name.startswith(".")) == sorted(
        [".#news", ".a&-b", ".&AH4-x", ".a&AC8-b", ".Entw&APw-rfe"])
    s.close()
