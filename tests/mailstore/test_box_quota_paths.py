"""On a running box: account paths cannot collide (issue 21 item 1), and a full mailbox gets 452 4.2.2 at RCPT.

The RCPT check reads the relay's usage cache (appliance/policy/quota.py, appliance/delivery/usage.py; issue 19):
the reply is the same as ever, and the cache must notice room being made, at once when a session expunges (the
account's index changes), within ``usage.MAX_AGE`` seconds when files are removed by hand.
"""

from __future__ import annotations

import imaplib
import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from appliance.delivery.usage import MAX_AGE
from appliance.mailstore import MailStore, maildir_path
from tests.helpers.box import Box
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.peers

FULL = "<** 452 4.2.2 Mailbox full: bob@example.test (mailbox full: 2 of 1 messages)"


def _swaks(box: Box, to: str, subject: str) -> str:
    if shutil.which("swaks") is None:
        pytest.fail("missing test peer swaks: run `make test` (it installs it)")
    cmd = ["swaks", "--server", f"{box.host('mx')}:{box.port('mx')}", "--timeout", "20", "--from",
           "someone@remote.test", "--to", to, "--header", f"Subject: {subject}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr


def _wait_new(path: Path, count: int, timeout: float = 20) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted((path / "new").iterdir()) if (path / "new").exists() else []
        if len(files) >= count:
            return files
        time.sleep(0.05)
    raise AssertionError(f"{path}: fewer than {count} messages arrived")


def test_tricky_local_part_and_full_mailbox(box: Box) -> None:
    alice = box.add_user("alice")
    sneaky = box.add_user("alice/.Sent")  # "/" is an atom character; the old mapping made this alice's Sent
    bob = box.add_user("bob")
    box.cli("user", "quota", bob, "--messages", "1", "--storage", "1M")
    box.up()
    mail_dir = box.cfg.paths.mail_dir

    marker = uuid.uuid4().hex
    out = _swaks(box, sneaky, marker)
    assert "250 2.0.0" in out.split("DATA")[-1], out
    [file] = _wait_new(maildir_path(mail_dir, sneaky), 1)
    assert marker.encode() in file.read_bytes()
    store = MailStore.open(maildir_path(mail_dir, alice), box.cfg.access.special_folders, box.cfg.access.outbox)
    assert all(store.status(n).messages == 0 for n in store.names())  # nothing landed in alice's store
    assert not maildir_path(mail_dir, sneaky).is_relative_to(maildir_path(mail_dir, alice))
    store.close()

    out = _swaks(box, bob, "first")
    assert "250 2.0.0" in out.split("DATA")[-1], out
    files = _wait_new(maildir_path(mail_dir, bob), 2)  # the message and the 90 % warning
    assert sum(b"Subject: Your mailbox is almost full" in f.read_bytes() for f in files) == 1
    out = _swaks(box, bob, "second")
    assert "<** 452 4.2.2 Mailbox full: bob@example.test" in out, out  # temporary: the sender keeps it
    assert len(list((maildir_path(mail_dir, bob) / "new").iterdir())) == 2

    listing = box.cli("user", "list").stdout
    assert any(line.startswith("bob@example.test") and "quota=" in line and "/1M 2/1" in line
               for line in listing.splitlines()), listing
    st = json.loads(box.cli("status", "--json", check=False).stdout)
    assert [n["address"] for n in st["mail_quota"]["near_full"]] == [bob]
    shown = box.cli("user", "quota", bob).stdout
    assert "2/1" in shown and "(own)" in shown


def _files(root: Path) -> list[Path]:
    return [p for sub in ("new", "cur") if (root / sub).exists() for p in (root / sub).iterdir()]


def _accepted(out: str) -> bool:
    return "250 2.0.0" in out.split("DATA")[-1]


def test_full_mailbox_refused_at_rcpt_until_room_is_made(box: Box) -> None:
    bob = box.add_user("bob")
    box.cli("user", "quota", bob, "--messages", "1")
    box.up()
    root = maildir_path(box.cfg.paths.mail_dir, bob)

    out = _swaks(box, bob, "first")
    assert _accepted(out), out
    wait_for("the message and the 90 % warning in bob's INBOX", lambda: len(_files(root)) >= 2)
    # Counted by local delivery into the cache the RCPT check reads: refused at once, nothing taken.
    out = _swaks(box, bob, "second")
    assert FULL in out, out
    assert "-> DATA" not in out, out  # refused at RCPT, before any data

    # The user makes room over IMAP: the index changes, the next RCPT sees it.
    with imaplib.IMAP4(box.host("imap"), box.port("imap")) as m:  # LOGOUT on leaving
        m.starttls(ssl_context=box.client_tls())
        m.login(bob, box.passwords[bob])
        assert m.select("INBOX")[1] == [b"2"]
        m.store("1:*", "+FLAGS", "(\\Deleted)")
        m.expunge()
    marker = uuid.uuid4().hex
    wait_for("bob's mailbox accepting mail again after EXPUNGE", lambda: _accepted(_swaks(box, bob, marker)),
             timeout=60, interval=0.5)
    wait_for("the new message delivered", lambda: any(marker.encode() in p.read_bytes() for p in _files(root)))

    # Full again (1 of 1). Removed by hand: no index tells, the cache's age does (MAX_AGE seconds).
    assert FULL.replace("2 of 1", "1 of 1") in _swaks(box, bob, "third")
    for p in (root / "new").iterdir():  # no session since: the message waits in new/, unindexed
        p.unlink()
    wait_for(f"bob's mailbox accepting mail within {MAX_AGE} s of files removed by hand",
             lambda: _accepted(_swaks(box, bob, "fourth")), timeout=60, interval=0.5)
