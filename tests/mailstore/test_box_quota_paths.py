"""On a running box: account paths cannot collide (issue 21 item 1), and a full mailbox gets 452 4.2.2 at RCPT."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from appliance.mailstore import MailStore, maildir_path
from tests.helpers.box import Box

pytestmark = pytest.mark.peers


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
