"""What the web console knows: admin/customer sessions, the audit log, the time-series store.

The HTTP side is `services/console/`; this package holds no protocol code and imports no
`services` module. Everything lives in one SQLite file, STATE_DIR/console.sqlite3 (WAL).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.config import Config
from appliance.sqlite_wal import enable_wal

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,   -- SHA-256 of the cookie value: a copy of the file logs nobody in
    login      TEXT NOT NULL,
    role       TEXT NOT NULL,      -- 'admin' or 'customer'
    csrf       TEXT NOT NULL,
    client_ip  TEXT NOT NULL,
    created    REAL NOT NULL,
    expires    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    ts        REAL NOT NULL,
    actor     TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    result    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    minute INTEGER NOT NULL,       -- unix time / 60
    series TEXT NOT NULL,
    value  REAL NOT NULL,          -- a counter's increase in that minute, a gauge's value
    PRIMARY KEY (minute, series)
);
CREATE TABLE IF NOT EXISTS last_raw (
    series TEXT PRIMARY KEY,       -- a counter's last value read, or 'up:SOURCE' for a source that answered
    value  REAL NOT NULL,
    minute INTEGER NOT NULL
);
"""


def db_path(cfg: Config) -> Path:
    return Path(cfg.paths.state_dir) / "console.sqlite3"


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection for one call, closed after it (the console runs each request in a pool thread;
    autocommit: each statement is its own transaction)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        enable_wal(db)
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        yield db
    finally:
        db.close()
