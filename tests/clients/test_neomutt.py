"""neomutt driven in tmux (send-keys / capture-pane) over IMAPS: open, flag, move, search (issue 14 item 4).

What neomutt did is then checked on the server with imaplib, and the screen must never show an
IMAP error line.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.access.conftest import PASSWORD, imap, message
from tests.conftest import require
from tests.helpers.box import Box

USER = "mutt"
SUBJECTS = ["alpha report", "beta invoice", "gamma newsletter", "delta agenda"]


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30, check=True).stdout


@pytest.fixture
def screen(access_box: Box, tmp_path: Path) -> Iterator[object]:
    require("neomutt", "tmux")
    address = access_box.add_user(USER, PASSWORD)
    m = imap(access_box, USER)
    for s in SUBJECTS:
        assert m.append("INBOX", None, None, message("sender@example.net", address, s))[0] == "OK"
    assert m.create("Archive")[0] == "OK"
    m.logout()
    rc = tmp_path / "neomuttrc"
    rc.write_text(
        f'set folder = "imaps://{access_box.host("imaps")}:{access_box.port("imaps")}/"\n'
        'set spoolfile = "+INBOX"\n'
        f'set imap_user = "{address}"\nset imap_pass = "{PASSWORD}"\n'
        f'set ssl_ca_certificates_file = "{access_box.cfg.tls.cert}"\n'
        f'set certificate_file = "{tmp_path}/certificates"\n'
        'set header_cache = ""\nset message_cachedir = ""\nset record = ""\nset mail_check = 60\n'
        "set confirmappend = no\nset confirmcreate = no\nset delete = yes\nset quit = yes\nset move = no\n"
        "set sort = mailbox-order\nset wait_key = no\nset imap_check_subscribed = no\n"
        'set index_format = "%4C %Z %s"\nset timeout = 60\n')
    name = f"neomutt-{tmp_path.name}"[:40]
    env = f"HOME={tmp_path} TERM=xterm-256color"
    _tmux("new-session", "-d", "-s", name, "-x", "160", "-y", "40", f"env {env} neomutt -n -F {rc}")
    try:
        yield (name, address)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True, timeout=30)


def _wait(name: str, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        pane = _tmux("capture-pane", "-p", "-t", name)
        assert "rror" not in pane, f"neomutt shows an error:\n{pane}"
        if text in pane:
            return pane
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not on neomutt's screen after {timeout}s:\n{pane}")
        time.sleep(0.2)


def _keys(name: str, *keys: str) -> None:
    _tmux("send-keys", "-t", name, *keys)


def test_neomutt_opens_flags_moves_and_searches(access_box: Box, screen: tuple[str, str]) -> None:
    name, _ = screen
    _wait(name, "delta agenda")
    # Flag message 1 ("alpha report"): F is flag-message.
    _keys(name, "1", "Enter", "F")
    _wait(name, "!")
    # Move message 2 ("beta invoice") to =Archive: s is save-message (it marks the original deleted),
    # then $ syncs (expunges).
    _keys(name, "2", "Enter", "s")
    _wait(name, "Save to mailbox")
    _keys(name, "C-u", "=Archive", "Enter")
    time.sleep(1)
    _keys(name, "$")
    deadline = time.monotonic() + 30
    while "beta invoice" in _tmux("capture-pane", "-p", "-t", name) and time.monotonic() < deadline:
        time.sleep(0.2)
    # Search: limit the index to ~s gamma.
    _keys(name, "l")
    _wait(name, "Limit to messages matching")
    _keys(name, "~s gamma", "Enter")
    pane = _wait(name, "gamma newsletter")
    assert "alpha report" not in pane and "delta agenda" not in pane, pane
    _keys(name, "q")
    time.sleep(1)

    m = imap(access_box, USER)
    m.select("INBOX")
    _, data = m.search(None, "SUBJECT", '"alpha report"')
    (alpha,) = data[0].split()
    _, flags = m.fetch(alpha, "(FLAGS)")
    assert b"\\Flagged" in flags[0], flags
    assert m.search(None, "SUBJECT", "beta")[1] == [b""], "the moved message is still in INBOX"
    assert len(m.search(None, "ALL")[1][0].split()) == 3
    m.select("Archive")
    assert len(m.search(None, "SUBJECT", "beta")[1][0].split()) == 1, "the moved message is not in Archive"
    m.logout()
