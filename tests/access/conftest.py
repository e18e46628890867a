"""A running development box for the access tests: relay + access under supervisor, users alice/bob/carol.

One box per test module (starting one costs seconds). The relay is a real
peer here (supervisor runs it with the access service): every login asks its
limiter and every send goes through it.
"""

from __future__ import annotations

import imaplib
import poplib
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import tomli_w

from tests.access.imapdiff import RawIMAP
from tests.helpers.box import Box, make_box, pids_under

PASSWORD = "correct horse battery"
MAX_MESSAGE_SIZE = 300_000


def _tune_config(box: Box) -> None:
    data = tomllib.loads(box.config_file.read_text())
    # Small enough to test "size-limited while reading" without megabytes of traffic.
    data.setdefault("relay", {})["max_message_size"] = MAX_MESSAGE_SIZE
    # Refusals are part of these tests; the abuse brake is tested in tests/ratelimit/.
    data.setdefault("limits", {})["abuse_brake"] = {"enabled": False}
    data["limits"]["classes"] = {"default": {"messages_per_minute": 600, "burst": 200, "per_day": 0}}
    box.config_file.write_text(tomli_w.dumps(data))


def _wait_socket(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout}s")
        time.sleep(0.1)


@contextmanager
def running_box(box: Box) -> Iterator[Box]:
    """BOX up (relay and access listening, the internal socket present), then down with no process left."""
    try:
        box.up()
        _wait_socket(box.cfg.paths.internal_socket)
        yield box
    finally:
        box.down()
    leaked = pids_under(box.dir)
    assert not leaked, f"processes left behind under {box.dir}: {leaked}"


@pytest.fixture(scope="module")
def access_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    box = make_box(tmp_path_factory.mktemp("access"))
    _tune_config(box)
    for user in ("alice", "bob", "carol"):
        box.add_user(user, PASSWORD)
    with running_box(box):
        yield box


def imap(box: Box, user: str = "alice", implicit: bool = False) -> imaplib.IMAP4:
    """A logged-in imaplib client (STARTTLS on the imap port, or implicit TLS on imaps)."""
    if implicit:
        m: imaplib.IMAP4 = imaplib.IMAP4_SSL(box.host("imaps"), box.port("imaps"), ssl_context=box.client_tls())
    else:
        m = imaplib.IMAP4(box.host("imap"), box.port("imap"))
        m.starttls(ssl_context=box.client_tls())
    m.login(f"{user}@{box.domain}", PASSWORD)
    return m


def pop(box: Box, user: str = "alice") -> poplib.POP3:
    p = poplib.POP3(box.host("pop3"), box.port("pop3"), timeout=30)
    p.stls(context=box.client_tls())
    p.user(f"{user}@{box.domain}")
    p.pass_(PASSWORD)
    return p


def inbox_files(box: Box, user: str) -> list[Path]:
    base = box.maildir(f"{user}@{box.domain}")
    return sorted([*(base / "new").iterdir(), *(base / "cur").iterdir()])


def inbox_messages(box: Box, user: str) -> list[bytes]:
    """Contents of USER's INBOX files (the access service may move new/ to cur/ meanwhile: retry)."""
    for _ in range(50):
        try:
            return [f.read_bytes() for f in inbox_files(box, user)]
        except FileNotFoundError:
            continue
    raise AssertionError(f"{user}'s Maildir kept changing")


def message(sender: str, to: str, subject: str, body: str = "Hello.\r\n", extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\n{extra}Subject: {subject}\r\nMessage-ID: <{subject.replace(' ', '.')}"
            f"@test>\r\nDate: Mon, 30 Nov 2026 12:00:00 +0000\r\n\r\n{body}").encode()


def raw_login(box: Box, user: str = "alice", timeout: float = 30) -> RawIMAP:
    """A raw IMAP connection (STARTTLS), logged in as USER."""
    c = RawIMAP(box.host("imap"), box.port("imap"), box.client_tls(), timeout=timeout)
    _, ok = c.command(b'LOGIN "%s@%s" "%s"' % (user.encode(), box.domain.encode(), PASSWORD.encode()))
    assert ok.startswith(b"OK"), ok
    return c


def raw_ok(c: RawIMAP, cmd: bytes, literal: bytes | None = None) -> list[bytes]:
    """CMD's untagged lines, asserting the tagged answer is OK."""
    untagged, tagged = c.command(cmd, literal)
    assert tagged.startswith(b"OK"), (cmd, untagged, tagged)
    return untagged
