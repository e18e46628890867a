"""The limiter's persistent state: daily quotas, first-seen recipients, brake resets.

One SQLite file, ``STATE_DIR/limits.sqlite3`` (WAL). Rates (GCRA) live in memory
only: losing them on restart costs at most one burst. Daily counts must survive a
restart, or a restart would hand every customer a fresh quota; each accepted
message is written through before the relay moves on.

Known recipients are stored as truncated SHA-256 digests, not addresses: the
brake needs to know "seen before?", not whom.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from appliance.config import Config

SCHEMA = """
CREATE TABLE IF NOT EXISTS daily (
    key   TEXT NOT NULL,
    day   TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (key, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS known_recipients (
    account    TEXT NOT NULL,
    digest     TEXT NOT NULL,
    first_seen REAL NOT NULL,
    PRIMARY KEY (account, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS login_addresses (
    account   TEXT NOT NULL,
    address   TEXT NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (account, address)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS brake_reset (
    account TEXT PRIMARY KEY,
    at      REAL NOT NULL
) WITHOUT ROWID;
"""

KEEP_DAYS = 7
KNOWN_RECIPIENT_DAYS = 365
# Client addresses (ip_key: IPv4 or IPv6 /64) an account logged in from: the newest
# KNOWN_LOGIN_ADDRESSES per account, forgotten after KNOWN_LOGIN_DAYS without a login.
KNOWN_LOGIN_ADDRESSES = 32
KNOWN_LOGIN_DAYS = 180


def limits_db(cfg: Config) -> Path:
    return Path(cfg.paths.state_dir) / "limits.sqlite3"


def utc_day(wall: float) -> str:
    return dt.datetime.fromtimestamp(wall, dt.UTC).strftime("%Y-%m-%d")


def seconds_to_utc_midnight(wall: float) -> float:
    now = dt.datetime.fromtimestamp(wall, dt.UTC)
    midnight = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


def recipient_digest(recipient: str) -> str:
    return hashlib.sha256(recipient.lower().encode()).hexdigest()[:32]


class LimitStore:
    """Daily counters cached in memory, written through to SQLite."""

    def __init__(self, path: str | Path, now: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._now = now  # wall clock, for pruning old rows when the file is opened
        self._conn: sqlite3.Connection | None = None  # opened on first use
        self._day = ""
        self._day_start = self._day_end = 0.0
        self._counts: dict[str, int] = {}

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a committed count survives a process crash; only an
            # OS crash may lose the last few increments.
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            self._conn = db
            self.prune(self._now())
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def prune(self, wall: float) -> None:
        cutoff = utc_day(wall - KEEP_DAYS * 86400)
        self._db.execute("DELETE FROM daily WHERE day < ?", (cutoff,))
        self._db.execute("DELETE FROM known_recipients WHERE first_seen < ?", (wall - KNOWN_RECIPIENT_DAYS * 86400,))
        self._db.execute("DELETE FROM login_addresses WHERE last_seen < ?", (wall - KNOWN_LOGIN_DAYS * 86400,))

    # --- daily quotas ---------------------------------------------------------------

    def _today(self, wall: float) -> str:
        # Formatting a date costs microseconds; only do it when the UTC day changes.
        if not self._day_start <= wall < self._day_end:
            self._day = utc_day(wall)
            self._day_start = wall - (wall % 86400)
            self._day_end = self._day_start + 86400
            self._counts = {}
        return self._day

    def daily_count(self, key: str, wall: float) -> int:
        day = self._today(wall)
        n = self._counts.get(key)
        if n is None:
            row = self._db.execute("SELECT count FROM daily WHERE key = ? AND day = ?", (key, day)).fetchone()
            n = int(row[0]) if row else 0
            self._counts[key] = n
        return n

    def add_daily(self, key: str, wall: float, n: int = 1) -> int:
        current = self.daily_count(key, wall) + n
        day = self._day
        self._db.execute(
            "INSERT INTO daily(key, day, count) VALUES (?, ?, ?)"
            " ON CONFLICT(key, day) DO UPDATE SET count = count + excluded.count",
            (key, day, n),
        )
        self._counts[key] = current
        return current

    # --- abuse brake ----------------------------------------------------------------

    def learn_recipients(self, account: str, recipients: list[str], wall: float) -> int:
        """Remember RECIPIENTS for ACCOUNT; return how many were first-time recipients."""
        new = 0
        self._db.execute("BEGIN")
        try:
            for r in recipients:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO known_recipients(account, digest, first_seen) VALUES (?, ?, ?)",
                    (account, recipient_digest(r), wall),
                )
                new += cur.rowcount
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return new

    def mark_brake_reset(self, account: str, wall: float) -> None:
        """Written by `appliance user release`: the brake forgets ACCOUNT's events before WALL."""
        self._db.execute(
            "INSERT INTO brake_reset(account, at) VALUES (?, ?) ON CONFLICT(account) DO UPDATE SET at = excluded.at",
            (account, wall),
        )

    def brake_reset_at(self, account: str) -> float:
        row = self._db.execute("SELECT at FROM brake_reset WHERE account = ?", (account,)).fetchone()
        return float(row[0]) if row else 0.0

    # --- addresses an account logged in from (the per-account AUTH limit) -------------

    def login_addresses(self, account: str) -> set[str]:
        rows = self._db.execute("SELECT address FROM login_addresses WHERE account = ?", (account,)).fetchall()
        return {r[0] for r in rows}

    def remember_login_address(self, account: str, address: str, wall: float) -> None:
        """ACCOUNT logged in from ADDRESS (an ip_key); keep only its newest KNOWN_LOGIN_ADDRESSES."""
        self._db.execute("BEGIN")
        try:
            self._db.execute(
                "INSERT INTO login_addresses(account, address, last_seen) VALUES (?, ?, ?)"
                " ON CONFLICT(account, address) DO UPDATE SET last_seen = excluded.last_seen",
                (account, address, wall),
            )
            self._db.execute(
                "DELETE FROM login_addresses WHERE account = ? AND address NOT IN"
                " (SELECT address FROM login_addresses WHERE account = ? ORDER BY last_seen DESC LIMIT ?)",
                (account, account, KNOWN_LOGIN_ADDRESSES),
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
