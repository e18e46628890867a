"""The benchmark's mailboxes, written straight into Maildir (no IMAP APPEND: 100,000 of those take hours).

Every message is about 3 KB with CRLF line ends (as the relay writes them), a third carry
\\Seen (`:2,S` in cur/), the rest are unread (`:2,`). File names follow the Maildir
convention with ascending timestamps, so Dovecot (which sorts new files by name) and the box
assign UIDs in the same order. The box and Dovecot each get their own copy (separate inodes:
Dovecot's mail processes run as nobody and must own what they rename and link), built from the
same bytes. Further users' INBOXes are hard links to one server's copy (cheap: no data written).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

BASE_TIME = 1_764_000_000  # 2025-11-24, a fixed clock so two builds name files alike
HOST = "benchhost"
_BODY_LINE = b"The quick brown fox jumps over the lazy dog while the benchmark counts. 0123456789\r\n"


def message(i: int) -> bytes:
    """Message I: headers a mail client shows (for ENVELOPE) and a body that makes it about 3 KB."""
    head = (f"Return-Path: <sender{i % 97}@example.net>\r\n"
            f"Date: Mon, 24 Nov 2025 {i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d} +0000\r\n"
            f"From: Sender {i % 97} <sender{i % 97}@example.net>\r\n"
            f"To: Bench User <bench@example.test>\r\n"
            f"Subject: benchmark message number {i}\r\n"
            f"Message-ID: <bench.{i}@example.net>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    return head + _BODY_LINE * ((3000 - len(head)) // len(_BODY_LINE))


def seen(i: int) -> bool:
    return i % 3 == 0


def _name(i: int) -> str:
    return f"{BASE_TIME + i // 1000}.M{i % 1000 * 1000}P1Q{i}.{HOST}:2,{'S' if seen(i) else ''}"


def maildir_dirs(root: Path, uid: int | None = None) -> None:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        if uid is not None:
            os.chown(root / sub, uid, uid)
    if uid is not None:
        os.chown(root, uid, uid)


def build(root: Path, count: int, owner: int | None = None, deadline: float | None = None) -> list[Path]:
    """COUNT messages into ROOT/cur (a Maildir INBOX); returns the files in UID order. OWNER: chown to it."""
    maildir_dirs(root, owner)
    cur = root / "cur"
    files = []
    for i in range(count):
        path = cur / _name(i)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, message(i))
            if owner is not None:
                os.fchown(fd, owner, owner)
        finally:
            os.close(fd)
        files.append(path)
        if deadline is not None and i % 1000 == 0 and time.monotonic() > deadline:
            raise TimeoutError(f"building {root} took too long ({i} of {count} files)")
    return files


def link_copy(files: list[Path], root: Path, owner: int | None = None) -> None:
    """Another INBOX holding the same messages as FILES, by hard links (no data written)."""
    maildir_dirs(root, owner)
    cur = root / "cur"
    for f in files:
        os.link(f, cur / f.name)


_delivered = 0


def deliver(root: Path, data: bytes, owner: int | None = None) -> Path:
    """One new message into ROOT/new the way the relay does it: write into tmp/, fsync, rename."""
    global _delivered
    _delivered += 1
    now = time.time()
    name = f"{int(now)}.M{int(now * 1e6) % 1_000_000}P{os.getpid()}Q{_delivered}.{HOST}"
    tmp = root / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        if owner is not None:
            os.fchown(fd, owner, owner)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, root / "new" / name)
    return root / "new" / name
