"""The per-account index: one SQLite database in WAL mode, ``ROOT/appliance-index.sqlite``.

In the spirit of Dovecot's lib-index, the index holds everything about a
message except its bytes: UID, flags, keywords, CRLF size, internal date,
MODSEQ, plus cached ENVELOPE/BODYSTRUCTURE/header fields. The messages stay
Maildir files; the index can always be rebuilt from them (see ``rebuild.py``).

Durability (docs/mailstore.md): ``synchronous=FULL``, so a committed
transaction survives power loss. That matters for UIDs: the UIDNEXT a
transaction hands out must never be handed out again (RFC 3501 §2.3.1.1), and
in WAL mode a commit costs one fsync of the log, a small price next to the
two fsyncs each message file already gets.

A small pool of connections per account: an operation checks one out and
returns it (``MAX_IDLE`` are kept). Concurrent operations on one account
never share a connection, which would interleave their transactions; and
since the access service serializes each account's writes, one or two
connections serve it. (One connection per worker thread, as before, made
8 threads x 20 open accounts = 160 connections and their caches.) A
generation number lets ``close`` (e.g. by the LRU of open stores) retire
every connection; the next operation opens a new one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from appliance.mailstore.errors import MailstoreError
from appliance.mailstore.maildir import DELETED, SEEN
from appliance.sqlite_wal import enable_wal

log = logging.getLogger("appliance.mailstore.index")

INDEX_FILE = "appliance-index.sqlite"
BROKEN_FILE = "appliance-index.broken"  # set when an operation met corruption: the next open rebuilds
LOCK_FILE = "appliance-index.lock"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000
MAX_IDLE = 2  # connections kept per account between operations

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mailboxes (
    id               INTEGER PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    uidvalidity      INTEGER NOT NULL,
    uidnext          INTEGER NOT NULL,
    highestmodseq    INTEGER NOT NULL,
    special_use      TEXT,
    first_recent_uid INTEGER NOT NULL,
    -- Maintained with every insert, delete and flag change, so STATUS and quota are O(1).
    messages         INTEGER NOT NULL DEFAULT 0,
    bytes            INTEGER NOT NULL DEFAULT 0,
    unseen           INTEGER NOT NULL DEFAULT 0,
    deleted          INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS messages (
    mailbox_id   INTEGER NOT NULL,
    uid          INTEGER NOT NULL,
    stem         TEXT NOT NULL,      -- file name without ":2,<info>"
    flags        INTEGER NOT NULL,   -- bitmask, appliance.mailstore.maildir
    keywords     TEXT NOT NULL DEFAULT '',  -- sorted, space separated
    size         INTEGER NOT NULL,   -- octets with CRLF line endings (RFC822.SIZE)
    internaldate REAL NOT NULL,
    modseq       INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_modseq ON messages (mailbox_id, modseq);
CREATE INDEX IF NOT EXISTS messages_stem ON messages (mailbox_id, stem);
-- Rows a fast import left to be completed (fill.py): found without a scan, and empty once filled.
CREATE INDEX IF NOT EXISTS messages_unfilled ON messages (mailbox_id, uid) WHERE internaldate < 0;
-- Partial indexes of an early version, replaced by the counters in `mailboxes`.
DROP INDEX IF EXISTS messages_unseen;
DROP INDEX IF EXISTS messages_deleted;
-- SEARCH UNSEEN and SELECT's first unseen: the unseen rows only, with what those queries read
-- (covering: no lookup of the table row). A query uses it only if its WHERE has the very term
-- `flags & 1 = 0` (SQLite's rule for partial indexes), as Mailbox.uids_with writes it.
CREATE INDEX IF NOT EXISTS messages_unseen_uids ON messages (mailbox_id, uid, flags) WHERE flags & 1 = 0;
CREATE TABLE IF NOT EXISTS expunged (
    mailbox_id INTEGER NOT NULL,
    uid        INTEGER NOT NULL,
    modseq     INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS expunged_modseq ON expunged (mailbox_id, modseq);
CREATE TABLE IF NOT EXISTS cache (
    mailbox_id INTEGER NOT NULL,
    uid        INTEGER NOT NULL,
    key        TEXT NOT NULL,
    value      BLOB NOT NULL,
    PRIMARY KEY (mailbox_id, uid, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keywords (
    mailbox_id INTEGER NOT NULL,
    keyword    TEXT NOT NULL,
    PRIMARY KEY (mailbox_id, keyword)
) WITHOUT ROWID;
"""


class Counter:
    """A thread-safe count for metrics (the access service exports it to Prometheus)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def inc(self) -> None:
        with self._lock:
            self.value += 1


# Indexes found unreadable and rebuilt from the Maildir (appliance_mailstore_index_rebuilds_total).
REBUILDS = Counter()


def _connect(path: Path) -> sqlite3.Connection:
    # cached_statements: the hot paths use a dozen statements; the default 128 would also keep every
    # "uid IN (?, ... ?)" length ever prepared, in each of the many connections.
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False,
                         cached_statements=32)
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    enable_wal(db)
    db.execute("PRAGMA synchronous=FULL")
    # 128 KiB per connection: there are up to MAX_IDLE per open account (64 of them), and 4 MB each
    # would be hundreds of MB of RSS; the OS page cache holds the file anyway (a 100,000-row range
    # scan measured the same with 256 KiB as with 4 MB). A large transaction spills to the WAL early.
    db.execute("PRAGMA cache_size=-128")
    return db


CHUNK = 500  # UIDs per "uid IN (...)": SQLite's variable limit is 32766; smaller keeps statements cheap to prepare


def chunks(seq: Sequence[int]) -> Iterable[Sequence[int]]:
    for i in range(0, len(seq), CHUNK):
        yield seq[i:i + CHUNK]


def adjust_counts(db: sqlite3.Connection, mailbox_id: int, added: Iterable[int], removed: Iterable[int]) -> None:
    """Keep the mailbox's unseen/deleted counters right: ADDED and REMOVED are flag bitmasks of rows
    (or of a row's flags before and after a change)."""
    unseen = deleted = 0
    for bits in added:
        unseen += not bits & SEEN
        deleted += bool(bits & DELETED)
    for bits in removed:
        unseen -= not bits & SEEN
        deleted -= bool(bits & DELETED)
    if unseen or deleted:
        db.execute("UPDATE mailboxes SET unseen = unseen + ?, deleted = deleted + ? WHERE id = ?",
                   (unseen, deleted, mailbox_id))


def _add_counters(db: sqlite3.Connection) -> None:
    """Indexes made before the unseen/deleted counters get them (additive, computed once)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(mailboxes)")}
    for column, bit, test in (("unseen", 1, "= 0"), ("deleted", 8, "!= 0")):
        if column not in have:
            db.execute(f"ALTER TABLE mailboxes ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
            db.execute(f"UPDATE mailboxes SET {column} = (SELECT count(*) FROM messages "
                       f"WHERE mailbox_id = mailboxes.id AND flags & {bit} {test})")


def _corruption(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


@contextmanager
def account_lock(root: Path) -> Iterator[None]:
    """An exclusive lock over opening/rebuilding the index (between processes and threads)."""
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


class Index:
    """The SQLite index of one account. Thread-safe; each operation checks out its own connection."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / INDEX_FILE
        self._lock = threading.Lock()
        self._writer = threading.Lock()  # one write transaction at a time in this process (see write)
        self._conns: list[sqlite3.Connection] = []  # every open connection (checked out or idle)
        self._idle: list[tuple[int, sqlite3.Connection]] = []  # (generation, connection)
        self._generation = 0
        self._active = 0  # operations running (in any thread): close() waits for them
        self._close_pending = False
        self.rebuilt = False  # True when open() found no usable index: callers import the Maildir
        self.broken = False  # an operation met a corrupt page (see _using)

    @classmethod
    def open(cls, root: Path) -> Index:
        """Open (or create) ROOT's index; an unreadable one is moved aside, logged and counted.

        Call under ``account_lock(root)``.
        """
        ix = cls(root)
        existed = ix.path.exists()
        if (root / BROKEN_FILE).exists():
            ix._discard(sqlite3.DatabaseError("an earlier operation found it corrupt"))
            (root / BROKEN_FILE).unlink(missing_ok=True)
            REBUILDS.inc()
            return ix
        try:
            db = ix.conn()
            db.executescript(SCHEMA)
            version = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
            if version is None:
                db.execute("INSERT INTO meta(key, value) VALUES ('version', ?)", (SCHEMA_VERSION,))
                ix.rebuilt = True  # a new file: whatever is on disk must be imported
            elif int(version[0]) > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"index schema {version[0]} is newer than this software")
            _add_counters(db)
            db.execute("SELECT count(*) FROM mailboxes").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                ix.close()
                raise
            ix._discard(exc)
        except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed", ...
            ix._discard(exc)
        if ix.rebuilt and existed:
            REBUILDS.inc()
        return ix

    def _discard(self, exc: Exception) -> None:
        """Move an unreadable index aside (kept for a post-mortem) and start an empty one."""
        self.close()
        aside = self.path.with_name(f"{INDEX_FILE}.corrupt-{int(time.time())}")
        log.error("mail index %s unreadable (%s): rebuilding it from the Maildir; the old file is %s",
                  self.path, exc, aside.name)
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(aside) + suffix))
        db = self.conn()
        db.executescript(SCHEMA)
        db.execute("INSERT INTO meta(key, value) VALUES ('version', ?)", (SCHEMA_VERSION,))
        self.rebuilt = True

    def conn(self) -> sqlite3.Connection:
        """A connection for ``open`` (single-threaded, under the account lock); it joins the pool."""
        gen, db = self._checkout()
        self._checkin(gen, db)
        return db

    def _checkout(self) -> tuple[int, sqlite3.Connection]:
        with self._lock:
            if self._idle:
                return self._idle.pop()  # close() empties the list, so an idle one is current
            gen = self._generation
        db = _connect(self.path)
        with self._lock:
            self._conns.append(db)
        return gen, db

    def _checkin(self, gen: int, db: sqlite3.Connection) -> None:
        if db.in_transaction:  # a COMMIT that failed (disk full...): never hand on an open transaction
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                gen = -1  # unusable: close it
        with self._lock:
            if gen == self._generation and len(self._idle) < MAX_IDLE:
                self._idle.append((gen, db))
                return
            if db in self._conns:
                self._conns.remove(db)
        db.close()

    @contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._active += 1
        gen, db = self._checkout()
        try:
            yield db
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
                raise MailstoreError("not enough disk space", code="OVERQUOTA") from exc  # SQLITE_FULL
            if isinstance(exc, sqlite3.OperationalError) and not _corruption(exc):
                raise  # busy, locked...: not the file's fault
            # The file is damaged: say so once, have it rebuilt at the next open, and refuse this
            # operation with a clean error (the caller's session gets NO, never a traceback).
            if not self.broken:
                self.broken = True
                log.error("mail index %s is corrupt (%s): it will be rebuilt", self.path, exc)
                (self.root / BROKEN_FILE).touch()
            raise MailstoreError("the mail index is damaged; try again", code="SERVERBUG") from exc
        finally:
            self._checkin(gen, db)
            with self._lock:
                self._active -= 1
                idle_close = self._active == 0 and self._close_pending
            if idle_close:
                self.close()

    @contextmanager
    def write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: the writer lock is taken up front, no upgrade deadlock).

        Writers of this process queue on a Python lock first: SQLite's busy handler polls with
        sleeps of up to 100 ms, so a waiting session's write could starve behind a loop of short
        transactions (the background fill, fill.py); a lock wakes the next writer at once.

        DURABLE=False: commit without the fsync (synchronous=NORMAL), for rows that are derived
        and rebuilt when missing (the ENVELOPE/BODYSTRUCTURE cache). In WAL mode the database
        stays consistent after a power loss; only such a transaction may be lost, and the next
        durable commit syncs it with its own. The setting cannot change inside a transaction.
        """
        with self._writer, self._using() as db:
            if not durable:
                db.execute("PRAGMA synchronous=NORMAL")
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            finally:
                if not durable:
                    db.execute("PRAGMA synchronous=FULL")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every statement inside sees the same snapshot."""
        with self._using() as db:
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("COMMIT")

    def close(self) -> None:
        """Close every connection now, or when the last running operation ends.

        The next use in any thread opens a new connection, so closing a store someone
        still holds (the LRU evicting it) costs a reopen, never an error.
        """
        with self._lock:
            if self._active:
                self._close_pending = True
                return
            self._close_pending = False
            conns, self._conns = self._conns, []
            self._idle = []
            self._generation += 1
        for db in conns:
            try:
                db.close()
            except sqlite3.Error:
                pass
