"""The limiter's persistent state: daily quotas, first-seen recipients, known login addresses.

One SQLite file, ``STATE_DIR/limits.sqlite3`` (WAL). Rates (GCRA) live in memory
only: losing them on restart costs at most one burst. Daily counts must survive a
restart, or a restart would hand every customer a fresh quota.

The relay asks this state on its event loop for every decision, so no decision
may touch SQLite (a lock held by another process would freeze every session).
``LimitStore`` therefore keeps the whole state in memory, authoritative, loaded
once when it is opened (before the relay listens), and persists changes through
one write-behind thread: every ``BATCH_INTERVAL`` it writes what changed, in one
transaction. Pending changes are coalesced per row, so while the database is
locked or unwritable they take no more memory than the state itself. A clean
``close()`` writes everything; a crash (kill -9) loses at most the changes of the
last batch interval, plus whatever could not be written while another process
held the write lock (docs/ratelimits.md "Persistence").

The relay is the only writer of counts, known recipients and login addresses.
The one cross-process write is ``mark_brake_reset`` (`appliance user release`):
the writer thread notices it through ``PRAGMA data_version`` (which changes when
another connection commits) and reloads the small ``brake_reset`` table.

Known recipients are stored as truncated SHA-256 digests, not addresses: the
brake needs to know "seen before?", not whom.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from appliance.config import Config
from appliance.ratelimit import metrics
from appliance.sqlite_wal import enable_wal

log = logging.getLogger("appliance.ratelimit")

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
# The newest first-time recipients kept per account: a cap on what one account's
# sending can make the relay remember (in memory and on disk).
KNOWN_RECIPIENTS_PER_ACCOUNT = 5000
# Client addresses (ip_key: IPv4 or IPv6 /64) an account logged in from: the newest
# KNOWN_LOGIN_ADDRESSES per account, forgotten after KNOWN_LOGIN_DAYS without a login.
KNOWN_LOGIN_ADDRESSES = 32
KNOWN_LOGIN_DAYS = 180

BATCH_INTERVAL = 0.1  # seconds between the writer's batches: what a crash can lose
BUSY_TIMEOUT = 5.0  # seconds one batch waits for the write lock before it is retried
CLOSE_TIMEOUT = 30.0  # seconds close() keeps trying to write the last changes


class LimitStoreError(sqlite3.DatabaseError):
    """The limiter's database cannot be opened or read (names the file)."""


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


def _connect(path: Path, timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        enable_wal(db)
        # NORMAL in WAL mode: a committed batch survives a process crash; only an
        # OS crash may lose the last few batches.
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


# --- for other processes (the CLI): one short connection each -----------------------------


def read_daily_count(path: str | Path, key: str, wall: float) -> int:
    """KEY's count for WALL's UTC day as last written by the relay (at most one batch behind)."""
    db = _connect(Path(path))
    try:
        row = db.execute("SELECT count FROM daily WHERE key = ? AND day = ?", (key, utc_day(wall))).fetchone()
    finally:
        db.close()
    return int(row[0]) if row else 0


def mark_brake_reset(path: str | Path, account: str, wall: float) -> None:
    """`appliance user release`: the brake forgets ACCOUNT's events before WALL.

    Written here and picked up by the relay's writer thread within one batch interval.
    """
    db = _connect(Path(path), timeout=30.0)
    try:
        db.execute(
            "INSERT INTO brake_reset(account, at) VALUES (?, ?) ON CONFLICT(account) DO UPDATE SET at = excluded.at",
            (account, wall),
        )
    finally:
        db.close()


class LimitStore:
    """Daily counters, known recipients and login addresses in memory; SQLite written behind.

    Every method but ``flush`` and ``close`` is pure memory, O(1) per item, and meant
    to be called from one thread (the relay's event loop).
    """

    def __init__(self, path: str | Path, now: Callable[[], float] = time.time,
                 interval: float = BATCH_INTERVAL) -> None:
        self.path = Path(path)
        self._now = now  # wall clock: which day to load, what to prune
        self._interval = interval
        wall = now()
        self._day = utc_day(wall)
        self._day_start = wall - (wall % 86400)
        self._day_end = self._day_start + 86400
        self._counts: dict[str, int] = {}
        # Insertion-ordered (oldest first), so the oldest entry is evicted in O(1).
        self._known: dict[str, dict[str, float]] = {}  # account -> recipient digest -> first seen
        self._logins: dict[str, dict[str, float]] = {}  # account -> ip_key -> last seen
        self._resets: dict[str, float] = {}  # account -> released at (replaced whole by the writer)
        # Changes not yet written, one entry per row (the last change wins); None deletes the row.
        self._lock = threading.Lock()
        self._daily_delta: dict[tuple[str, str], int] = {}
        self._known_rows: dict[tuple[str, str], float | None] = {}
        self._login_rows: dict[tuple[str, str], float | None] = {}
        self._barriers: list[concurrent.futures.Future[None]] = []
        self._wake = threading.Event()
        self._closing = False
        try:
            self._db = _connect(self.path)
            self._data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
            self._load(wall)
        except sqlite3.Error as exc:
            if getattr(self, "_db", None) is not None:
                self._db.close()
            raise LimitStoreError(f"{self.path}: {exc}") from exc
        self._thread = threading.Thread(target=self._run, name="limits-writer", daemon=True)
        self._thread.start()

    def _load(self, wall: float) -> None:
        db = self._db
        for key, count in db.execute("SELECT key, count FROM daily WHERE day = ?", (self._day,)):
            self._counts[key] = int(count)
        cutoff = wall - KNOWN_RECIPIENT_DAYS * 86400
        for account, digest, first in db.execute(
            "SELECT account, digest, first_seen FROM known_recipients WHERE first_seen >= ? ORDER BY first_seen",
            (cutoff,),
        ):
            self._add_known(account, digest, float(first))
        cutoff = wall - KNOWN_LOGIN_DAYS * 86400
        for account, address, last in db.execute(
            "SELECT account, address, last_seen FROM login_addresses WHERE last_seen >= ? ORDER BY last_seen",
            (cutoff,),
        ):
            self._touch_login(account, address, float(last))
        self._resets = self._read_resets()

    def _read_resets(self) -> dict[str, float]:
        return {a: float(at) for a, at in self._db.execute("SELECT account, at FROM brake_reset")}

    # --- daily quotas ---------------------------------------------------------------

    def _today(self, wall: float) -> str:
        # Formatting a date costs microseconds; only do it when the UTC day changes.
        if not self._day_start <= wall < self._day_end:
            self._day = utc_day(wall)
            self._day_start = wall - (wall % 86400)
            self._day_end = self._day_start + 86400
            # A new day: nothing of it can be on disk, the relay is the only writer of counts.
            self._counts = {}
        return self._day

    def daily_count(self, key: str, wall: float) -> int:
        self._today(wall)
        return self._counts.get(key, 0)

    def add_daily(self, key: str, wall: float, n: int = 1) -> int:
        day = self._today(wall)
        current = self._counts.get(key, 0) + n
        self._counts[key] = current
        with self._lock:
            self._daily_delta[(key, day)] = self._daily_delta.get((key, day), 0) + n
        return current

    # --- abuse brake ----------------------------------------------------------------

    def _add_known(self, account: str, digest: str, wall: float) -> None:
        known = self._known.setdefault(account, {})
        known[digest] = wall
        if len(known) > KNOWN_RECIPIENTS_PER_ACCOUNT:
            oldest = next(iter(known))
            del known[oldest]
            with self._lock:
                self._known_rows[(account, oldest)] = None

    def learn_recipients(self, account: str, recipients: list[str], wall: float) -> int:
        """Remember RECIPIENTS for ACCOUNT; return how many were first-time recipients."""
        known = self._known.get(account)
        if known:  # recipients first seen more than KNOWN_RECIPIENT_DAYS ago are forgotten
            cutoff = wall - KNOWN_RECIPIENT_DAYS * 86400
            while known and next(iter(known.values())) < cutoff:
                del known[next(iter(known))]
        new = 0
        for r in recipients:
            digest = recipient_digest(r)
            if known is not None and digest in known:
                continue
            self._add_known(account, digest, wall)
            known = self._known[account]
            with self._lock:
                self._known_rows[(account, digest)] = wall
            new += 1
        return new

    def brake_reset_at(self, account: str) -> float:
        return self._resets.get(account, 0.0)

    # --- addresses an account logged in from (the per-account AUTH limit) -------------

    def _touch_login(self, account: str, address: str, wall: float) -> None:
        seen = self._logins.setdefault(account, {})
        seen.pop(address, None)  # re-inserted last: the newest
        seen[address] = wall
        if len(seen) > KNOWN_LOGIN_ADDRESSES:
            oldest = next(iter(seen))
            del seen[oldest]
            with self._lock:
                self._login_rows[(account, oldest)] = None

    def knows_login_address(self, account: str, address: str, wall: float) -> bool:
        seen = self._logins.get(account)
        last = seen.get(address) if seen else None
        return last is not None and wall - last < KNOWN_LOGIN_DAYS * 86400

    def login_addresses(self, account: str) -> set[str]:
        wall = self._now()
        return {a for a in self._logins.get(account, {}) if self.knows_login_address(account, a, wall)}

    def remember_login_address(self, account: str, address: str, wall: float) -> None:
        """ACCOUNT logged in from ADDRESS (an ip_key); keep only its newest KNOWN_LOGIN_ADDRESSES."""
        self._touch_login(account, address, wall)
        with self._lock:
            self._login_rows[(account, address)] = wall

    # --- the writer thread --------------------------------------------------------------

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every change so far is written and resets from other processes are read."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            if self._closing:
                return
            self._barriers.append(done)
        self._wake.set()
        done.result(timeout)

    def close(self) -> None:
        """Write what is left (up to CLOSE_TIMEOUT) and stop the writer thread."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._wake.set()
        self._thread.join()

    def pending(self) -> int:
        """Changed rows not yet written (for logs and tests)."""
        with self._lock:
            return len(self._daily_delta) + len(self._known_rows) + len(self._login_rows)

    def _take(self) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], float | None],
                             dict[tuple[str, str], float | None], list[concurrent.futures.Future[None]]]:
        with self._lock:
            taken = self._daily_delta, self._known_rows, self._login_rows, self._barriers
            self._daily_delta, self._known_rows, self._login_rows, self._barriers = {}, {}, {}, []
        return taken

    def _give_back(self, daily: dict[tuple[str, str], int], known: dict[tuple[str, str], float | None],
                   logins: dict[tuple[str, str], float | None], barriers: list[concurrent.futures.Future[None]]) -> None:
        """A batch that could not be written goes back in front of what changed since."""
        with self._lock:
            for k, n in self._daily_delta.items():
                daily[k] = daily.get(k, 0) + n
            known.update(self._known_rows)
            logins.update(self._login_rows)
            self._daily_delta, self._known_rows, self._login_rows = daily, known, logins
            self._barriers = barriers + self._barriers

    def _write(self, daily: dict[tuple[str, str], int], known: dict[tuple[str, str], float | None],
               logins: dict[tuple[str, str], float | None]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO daily(key, day, count) VALUES (?, ?, ?)"
                " ON CONFLICT(key, day) DO UPDATE SET count = count + excluded.count",
                [(k, d, n) for (k, d), n in daily.items()],
            )
            db.executemany(
                "INSERT INTO known_recipients(account, digest, first_seen) VALUES (?, ?, ?)"
                " ON CONFLICT(account, digest) DO UPDATE SET first_seen = excluded.first_seen",
                [(a, d, t) for (a, d), t in known.items() if t is not None],
            )
            db.executemany("DELETE FROM known_recipients WHERE account = ? AND digest = ?",
                           [k for k, t in known.items() if t is None])
            db.executemany(
                "INSERT INTO login_addresses(account, address, last_seen) VALUES (?, ?, ?)"
                " ON CONFLICT(account, address) DO UPDATE SET last_seen = excluded.last_seen",
                [(a, d, t) for (a, d), t in logins.items() if t is not None],
            )
            db.executemany("DELETE FROM login_addresses WHERE account = ? AND address = ?",
                           [k for k, t in logins.items() if t is None])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _prune(self, wall: float) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM daily WHERE day < ?", (utc_day(wall - KEEP_DAYS * 86400),))
            db.execute("DELETE FROM known_recipients WHERE first_seen < ?", (wall - KNOWN_RECIPIENT_DAYS * 86400,))
            db.execute("DELETE FROM login_addresses WHERE last_seen < ?", (wall - KNOWN_LOGIN_DAYS * 86400,))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _poll_resets(self) -> None:
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:  # another connection committed: maybe a release
            self._data_version = version
            self._resets = self._read_resets()  # one reference swap: the loop sees old or new

    def _run(self) -> None:
        try:
            self._write_loop()
        except BaseException:  # a bug: say so loudly, and let no flush() wait for a dead thread
            log.exception("limits: the writer thread stopped; changes to %s are no longer written", self.path)
            with self._lock:
                self._closing = True
        finally:
            with self._lock:
                for b in self._barriers:
                    if not b.done():
                        b.set_result(None)
                self._barriers = []
            self._db.close()

    def _write_loop(self) -> None:
        pruned = False
        give_up_at: float | None = None
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            closing = self._closing
            if closing and give_up_at is None:
                give_up_at = time.monotonic() + CLOSE_TIMEOUT
            batch = self._take()
            daily, known, logins, barriers = batch
            try:
                if not pruned:
                    self._prune(self._now())
                    pruned = True
                if daily or known or logins:
                    self._write(daily, known, logins)
                self._poll_resets()
            except sqlite3.Error as exc:  # locked past BUSY_TIMEOUT, disk full, ...: try again
                n = len(daily) + len(known) + len(logins)
                if give_up_at is not None and time.monotonic() >= give_up_at:
                    log.error("limits: giving up on %d unwritten change(s) to %s: %s", n, self.path, exc)
                    metrics.STORE_WRITE_ERRORS.inc()
                    for b in barriers:
                        b.set_exception(TimeoutError(f"{self.path}: {exc}"))
                    break
                log.warning("limits: could not write %d change(s) to %s (will retry): %s", n, self.path, exc)
                metrics.STORE_WRITE_ERRORS.inc()
                self._give_back(*batch)
                continue
            for b in barriers:
                b.set_result(None)
            if closing and not self.pending():
                break
