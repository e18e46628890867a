"""Final delivery into an account's Maildir: write tmp/, fsync, rename into new/, fsync new/.

The file becomes visible to the access service only complete (the rename is
atomic), and the 'delivered' outcome is logged only after new/ is fsynced, so a
crash delivers at worst twice, never zero times.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

from appliance.spool.spool import fsync_dir

_counter = itertools.count()
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072")


def maildir_path(mail_dir: str | Path, account: str) -> Path:
    local, domain = account.rsplit("@", 1)
    return Path(mail_dir) / domain / local


def ensure_maildir(path: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True, mode=0o700)


def unique_name(size: int) -> str:
    now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}.{_HOST},S={size}"


def deliver(maildir: Path, sender: str, recipient: str, data: bytes) -> str:
    """Deliver DATA (CRLF or LF lines) to MAILDIR; returns the file name in new/."""
    ensure_maildir(maildir)
    # RFC 5321 4.4: the final delivery MTA adds Return-Path. Maildir files use LF line ends.
    body = data.replace(b"\r\n", b"\n")
    head = f"Return-Path: <{sender}>\nDelivered-To: {recipient}\n".encode()
    content = head + body
    name = unique_name(len(content))
    tmp = maildir / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, maildir / "new" / name)
    fsync_dir(maildir / "new")
    return name
