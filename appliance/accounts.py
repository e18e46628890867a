"""Customer accounts: SQLite (WAL) store with argon2id password hashes.

An account is its primary address (also its login), the identities it may use
as envelope sender and From:, a disabled flag, a limit class, an optional
per-account limit override, and a hold flag set by the abuse brake.

Passwords are only ever passed in as arguments from stdin or a prompt; they
are never logged nor put into an exception message.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from appliance.addresses import AddressError, normalize_address

log = logging.getLogger("appliance.accounts")
_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters
# Verifying against this on unknown logins keeps response time independent of
# whether the account exists.
_DUMMY_HASH = _HASHER.hash("not a password")

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    address      TEXT PRIMARY KEY,
    password     TEXT NOT NULL,
    disabled     INTEGER NOT NULL DEFAULT 0,
    limit_class  TEXT NOT NULL DEFAULT 'default',
    per_minute   REAL,
    burst        INTEGER,
    per_day      INTEGER,
    held         INTEGER NOT NULL DEFAULT 0,
    held_reason  TEXT NOT NULL DEFAULT '',
    held_since   REAL,
    created      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS identities (
    identity TEXT PRIMARY KEY,
    address  TEXT NOT NULL REFERENCES accounts(address) ON DELETE CASCADE
);
"""


# Writers wait this long for the database lock. They all run off the event loops
# (thread pools, the brake's writer thread), so a wait stalls one thread, no session.
BUSY_TIMEOUT = 30.0


def migrate(db: sqlite3.Connection) -> None:
    """Additive schema changes for files made by older versions: add each missing column.

    To add a column, append (table, column, SQL type and default) to ADDED_COLUMNS;
    never rename or drop (an older relay may still read the file during an upgrade).
    """
    for table, column, decl in ADDED_COLUMNS:
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


# (table, column, declaration) added after the first release; see ``migrate``.
ADDED_COLUMNS: list[tuple[str, str, str]] = [
    # Mail quota override (RFC 9208 STORAGE in bytes, MESSAGE); NULL: the limit class's default.
    ("accounts", "quota_storage", "INTEGER"),
    ("accounts", "quota_messages", "INTEGER"),
]


class AccountError(Exception):
    """A refused account operation; the message is safe to show to the operator."""


@dataclass(frozen=True)
class LimitOverride:
    per_minute: float
    burst: int
    per_day: int | None = None


@dataclass(frozen=True)
class Account:
    address: str
    identities: tuple[str, ...] = ()
    disabled: bool = False
    limit_class: str = "default"
    override: LimitOverride | None = None
    held: bool = False
    held_reason: str = ""
    held_since: float | None = None
    created: float = field(default=0.0, compare=False)
    quota_storage: int | None = None  # bytes, 0 unlimited; None: the limit class's quota_storage
    quota_messages: int | None = None  # 0 unlimited; None: the limit class's quota_messages

    def may_send_as(self, address: str) -> bool:
        a = address.lower()
        return a == self.address or a in self.identities


class AccountStore:
    """The accounts database. Cheap to open; each operation is its own transaction.

    One SQLite connection per thread: a store may be used from several threads
    (Twisted's pool, the relay's auth pool, the brake's writer thread), and a
    connection shared between threads would let one thread's ``BEGIN IMMEDIATE``
    meet another's open transaction ("cannot start a transaction within a
    transaction") or interleave statements. Each thread's connection is opened on
    its first call; ``close`` closes all of them.
    """

    def __init__(self, path: str | Path, busy_timeout: float = BUSY_TIMEOUT) -> None:
        """BUSY_TIMEOUT: how long a call waits for SQLite's lock. The relay's event-loop store (reads
        only; in WAL mode they rarely wait at all) passes a short one, so a stall is bounded."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        self._db.executescript(SCHEMA)  # in the opening thread, so a bad file fails here
        migrate(self._db)

    @property
    def _db(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # check_same_thread=False only so that ``close`` (any thread) can close every
            # connection; each connection is used by the one thread that opened it.
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=FULL")
            with self._conns_lock:
                if self._closed:
                    conn.close()
                    raise sqlite3.ProgrammingError("AccountStore is closed")
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        with self._conns_lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- queries -------------------------------------------------------------------

    def get(self, address: str) -> Account | None:
        try:
            addr = normalize_address(address)
        except AddressError:
            return None
        row = self._db.execute(
            "SELECT address, disabled, limit_class, per_minute, burst, per_day, held, held_reason, held_since, created,"
            " quota_storage, quota_messages FROM accounts WHERE address = ?",
            (addr,),
        ).fetchone()
        if row is None:
            return None
        ids = tuple(
            r[0] for r in self._db.execute("SELECT identity FROM identities WHERE address = ? ORDER BY identity", (addr,))
        )
        override = LimitOverride(row[3], row[4], row[5]) if row[3] is not None else None
        return Account(
            address=row[0],
            identities=ids,
            disabled=bool(row[1]),
            limit_class=row[2],
            override=override,
            held=bool(row[6]),
            held_reason=row[7],
            held_since=row[8],
            created=row[9],
            quota_storage=row[10],
            quota_messages=row[11],
        )

    def list(self) -> list[Account]:
        rows = self._db.execute("SELECT address FROM accounts ORDER BY address").fetchall()
        return [a for (addr,) in rows if (a := self.get(addr)) is not None]

    def owner_of(self, identity: str) -> str | None:
        """The account that may send as IDENTITY (its primary address or an alias)."""
        i = identity.lower()
        row = self._db.execute("SELECT address FROM accounts WHERE address = ?", (i,)).fetchone()
        if row:
            return str(row[0])
        row = self._db.execute("SELECT address FROM identities WHERE identity = ?", (i,)).fetchone()
        return str(row[0]) if row else None

    def authenticate(self, login: str, password: str) -> Account | None:
        """The account if LOGIN/PASSWORD are right and the account is enabled, else None."""
        try:
            addr = normalize_address(login)
        except AddressError:
            addr = ""
        row = self._db.execute("SELECT password FROM accounts WHERE address = ?", (addr,)).fetchone()
        stored = row[0] if row else _DUMMY_HASH
        try:
            _HASHER.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None:
            return None
        if _HASHER.check_needs_rehash(stored):
            # Only over the hash just verified: a password changed meanwhile (or a concurrent
            # login's rehash) must not be overwritten. The rehash is an upgrade, not part of
            # the login: if the database is busy, the login still succeeds.
            fresh = _HASHER.hash(password)  # before BEGIN: argon2 takes long, the write lock must not
            try:
                with self._tx() as db:
                    db.execute("UPDATE accounts SET password = ? WHERE address = ? AND password = ?",
                               (fresh, addr, stored))
            except sqlite3.OperationalError as exc:
                log.warning("password rehash for %s postponed: %s", addr, exc)
        account = self.get(addr)
        if account is None or account.disabled:
            return None
        return account

    # --- changes -------------------------------------------------------------------

    def add(self, address: str, password: str, limit_class: str = "default") -> Account:
        addr = normalize_address(address)
        _check_password(password)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM identities WHERE identity = ?", (addr,)).fetchone():
                raise AccountError(f"{addr} is already an alias of another account")
            try:
                db.execute(
                    "INSERT INTO accounts(address, password, limit_class, created) VALUES (?, ?, ?, ?)",
                    (addr, _HASHER.hash(password), limit_class, time.time()),
                )
            except sqlite3.IntegrityError:
                raise AccountError(f"account {addr} already exists") from None
        return self._must(addr)

    def delete(self, address: str) -> None:
        addr = normalize_address(address)
        with self._tx() as db:
            if db.execute("DELETE FROM accounts WHERE address = ?", (addr,)).rowcount == 0:
                raise AccountError(f"no account {addr}")

    def set_password(self, address: str, password: str) -> None:
        addr = normalize_address(address)
        _check_password(password)
        with self._tx() as db:
            if db.execute("UPDATE accounts SET password = ? WHERE address = ?", (_HASHER.hash(password), addr)).rowcount == 0:
                raise AccountError(f"no account {addr}")

    def set_disabled(self, address: str, disabled: bool) -> None:
        self._update(address, "disabled = ?", (int(disabled),))

    def set_limit_class(self, address: str, limit_class: str) -> None:
        self._update(address, "limit_class = ?", (limit_class,))

    def set_limits(self, address: str, override: LimitOverride | None) -> None:
        if override is None:
            self._update(address, "per_minute = NULL, burst = NULL, per_day = NULL", ())
        else:
            if override.per_minute <= 0 or override.burst < 1 or (override.per_day is not None and override.per_day < 0):
                raise AccountError("limits must be positive: --per-minute > 0, --burst >= 1, --per-day >= 0")
            self._update(
                address, "per_minute = ?, burst = ?, per_day = ?", (override.per_minute, override.burst, override.per_day)
            )

    def set_quota(self, address: str, storage: int | None, messages: int | None) -> None:
        """Set the account's mail quota override (None: back to the limit class's default; 0: unlimited)."""
        if (storage is not None and storage < 0) or (messages is not None and messages < 0):
            raise AccountError("quota limits cannot be negative")
        self._update(address, "quota_storage = ?, quota_messages = ?", (storage, messages))

    def hold(self, address: str, reason: str) -> bool:
        """Hold the account (abuse brake). True if it was not held before."""
        addr = normalize_address(address)
        with self._tx() as db:
            cur = db.execute(
                "UPDATE accounts SET held = 1, held_reason = ?, held_since = ? WHERE address = ? AND held = 0",
                (reason, time.time(), addr),
            )
            return cur.rowcount == 1

    def release(self, address: str) -> None:
        self._update(address, "held = 0, held_reason = '', held_since = NULL", ())

    def held(self) -> list[Account]:
        rows = self._db.execute("SELECT address FROM accounts WHERE held = 1 ORDER BY address").fetchall()
        return [a for (addr,) in rows if (a := self.get(addr)) is not None]

    def add_alias(self, address: str, identity: str) -> None:
        addr = normalize_address(address)
        ident = normalize_address(identity)
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM accounts WHERE address = ?", (addr,)).fetchone():
                raise AccountError(f"no account {addr}")
            if db.execute("SELECT 1 FROM accounts WHERE address = ?", (ident,)).fetchone():
                raise AccountError(f"{ident} is an account of its own")
            try:
                db.execute("INSERT INTO identities(identity, address) VALUES (?, ?)", (ident, addr))
            except sqlite3.IntegrityError:
                raise AccountError(f"{ident} is already an alias") from None

    def del_alias(self, address: str, identity: str) -> None:
        addr = normalize_address(address)
        ident = normalize_address(identity)
        with self._tx() as db:
            if db.execute("DELETE FROM identities WHERE identity = ? AND address = ?", (ident, addr)).rowcount == 0:
                raise AccountError(f"{ident} is not an alias of {addr}")

    def _update(self, address: str, assignment: str, params: tuple[object, ...]) -> None:
        addr = normalize_address(address)
        with self._tx() as db:
            if db.execute(f"UPDATE accounts SET {assignment} WHERE address = ?", (*params, addr)).rowcount == 0:
                raise AccountError(f"no account {addr}")

    def _must(self, addr: str) -> Account:
        a = self.get(addr)
        if a is None:  # pragma: no cover - just inserted
            raise AccountError(f"no account {addr}")
        return a


def _check_password(password: str) -> None:
    if len(password) < 8:
        raise AccountError("password too short: at least 8 characters")
    if any(c in password for c in "\r\n\0"):
        raise AccountError("password must not contain CR, LF or NUL")
