"""Maildir directories and file names for delivery (group commit is in local.py; an account's
Maildir path is ``appliance.mailstore.account_maildir``, shared with the access service).

A file becomes visible to the access service only complete (written in tmp/,
fsynced, renamed into new/), and a recipient counts as delivered only after
new/ is fsynced, so a crash delivers at worst twice, never zero times.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

_counter = itertools.count()
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072")


def ensure_maildir(path: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True, mode=0o700)


def unique_name(size: int, vsize: int | None = None) -> str:
    """A new file name; ``,W=`` is the size with CRLF line ends (so the store indexes it without reading)."""
    now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    w = f",W={vsize}" if vsize is not None else ""
    return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}.{_HOST},S={size}{w}"
