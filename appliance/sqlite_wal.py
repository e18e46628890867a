"""Switching an SQLite file to WAL mode safely when several processes open it at once.

Every SQLite file the box keeps (accounts, limits, mail indexes, console, MTA-STS, TLS-RPT) runs in
WAL mode so that readers never wait for the writer. The switch itself needs an exclusive lock, and
SQLite answers a second process switching the same *new* file at the same moment with
``database is locked`` at once: the busy handler is not called for it (seen with six services
opening one new accounts file during ``appliance up``). A file already in WAL mode needs no switch,
so the common case costs one read-only PRAGMA; a new file retries the switch for a bounded time.
"""

from __future__ import annotations

import sqlite3
import time

# Long enough for the other opener's schema transaction to finish; bounded so a file held by a
# stuck process still fails the opener (with SQLite's own error) instead of hanging a service.
SWITCH_TIMEOUT = 30.0


def enable_wal(db: sqlite3.Connection, timeout: float = SWITCH_TIMEOUT) -> None:
    """Put DB's file in WAL mode, retrying a switch that another opener's lock refuses."""
    if _mode(db) == "wal":
        return
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
        else:
            if str(mode).lower() == "wal":
                return
            # An in-memory or read-only file answers with its own mode: nothing to retry.
            if time.monotonic() > deadline or str(mode).lower() == "memory":
                return
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _mode(db: sqlite3.Connection) -> str:
    try:
        return str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    except sqlite3.OperationalError:
        return ""
