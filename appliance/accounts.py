"""Customer accounts: SQLite (WAL) store with argon2id password hashes.

An account is its primary address (also its login), the identities it may use
as envelope sender and From:, a disabled flag, a limit class, an optional
per-account limit override, and a hold flag set by the abuse brake.

Passwords are only ever passed in as arguments from stdin or a prompt; they
are never logged nor put into an exception message.
"""

from __future__ import annotations

import functools
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from appliance.addresses import AddressError, normalize_address
from appliance.sqlite_wal import enable_wal

if TYPE_CHECKING:
    from appliance.accounts_pg import PgAccountStore
    from appliance.config import Config

log = logging.getLogger("appliance.accounts")
_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters


@functools.cache
def dummy_hash() -> str:
    """What an unknown login is verified against, so its answer takes as long as a known one's.

    Made at the first unknown login, not at import: hashing costs about 90 ms of CPU, which every
    service start and every CLI command importing this module paid before.
    """
    return _HASHER.hash("not a password")

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
    """Create the tables and make the additive schema changes for files made by older versions.

    To add a column, append (table, column, SQL type and default) to ADDED_COLUMNS;
    never rename or drop (an older relay may still read the file during an upgrade).

    Several services open the file at once on a new box (``appliance up``): checking for a column
    and adding it in two steps let another process add it in between (``duplicate column name``).
    So a file that lacks anything is changed in one ``BEGIN IMMEDIATE`` transaction, which re-checks
    under the write lock; a current file is only read, so opening it never waits for a writer.
    """
    if _schema_current(db):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        # One statement at a time: executescript() would COMMIT the open transaction first.
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        for table, column, decl in ADDED_COLUMNS:
            if column not in _columns(db, table):
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _schema_current(db: sqlite3.Connection) -> bool:
    have = {table: _columns(db, table) for table in ("accounts", "identities")}
    return all(have.values()) and all(column in have[table] for table, column, _ in ADDED_COLUMNS)


# (table, column, declaration) added after the first release; see ``migrate``.
ADDED_COLUMNS: list[tuple[str, str, str]] = [
    # Mail quota override (RFC 9208 STORAGE in bytes, MESSAGE); NULL: the limit class's default.
    ("accounts", "quota_storage", "INTEGER"),
    ("accounts", "quota_messages", "INTEGER"),
    # May log in to the web console as an operator (`appliance user add --admin`, docs/console.md).
    ("accounts", "admin", "INTEGER NOT NULL DEFAULT 0"),
    # The box holding the account's Maildir (`fleet.box` names, docs/fleet.md "Home boxes"); '': this box.
    ("accounts", "home", "TEXT NOT NULL DEFAULT ''"),
]


class AccountError(Exception):
    """A refused account operation; the message is safe to show to the operator."""


class AccountsUnavailable(Exception):
    """The accounts database cannot answer now (shared PostgreSQL unreachable, timed out, schema
    not migrated): a temporary failure, never "no such account" nor "wrong password"."""


def open_accounts(cfg: Config, busy_timeout: float = BUSY_TIMEOUT) -> AccountStore | PgAccountStore:
    """The accounts store `state.backend` names: this box's SQLite (`local`) or the fleet's PostgreSQL
    (`shared`, appliance/accounts_pg.py). Every caller uses this, so each works with either."""
    if cfg.state.backend == "shared":
        from appliance.accounts_pg import PgAccountStore

        return PgAccountStore.from_config(cfg)
    return AccountStore(cfg.paths.accounts_db, busy_timeout=busy_timeout)


@dataclass(frozen=True)
class LimitOverride:
    per_minute: float
    burst: int
    per_day: int | None = None

    def check(self) -> None:
        """The one check of an override, for both account stores. NaN compares false with every
        number, so `per_minute <= 0` alone would let `--per-minute nan` through."""
        if not (math.isfinite(self.per_minute) and self.per_minute > 0) or self.burst < 1 \
                or (self.per_day is not None and self.per_day < 0):
            raise AccountError("limits must be positive: --per-minute > 0, --burst >= 1, --per-day >= 0")


def check_quota(storage: int | None, messages: int | None) -> None:
    """The one check of a quota override, for both account stores (None: the class default; 0: unlimited)."""
    if (storage is not None and storage < 0) or (messages is not None and messages < 0):
        raise AccountError("quota limits cannot be negative")


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
    admin: bool = False  # may log in to the web console as an operator
    home: str = ""  # the fleet box holding the Maildir (fleet.box names); "": this box / a single box

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
        migrate(self._db)  # in the opening thread, so a bad file fails here

    @property
    def _db(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # check_same_thread=False only so that ``close`` (any thread) can close every
            # connection; each connection is used by the one thread that opened it.
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            enable_wal(conn)
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
            " quota_storage, quota_messages, admin, home FROM accounts WHERE address = ?",
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
            admin=bool(row[12]),
            home=row[13],
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
        stored = row[0] if row else dummy_hash()
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

    def add(self, address: str, password: str, limit_class: str = "default", home: str = "") -> Account:
        addr = normalize_address(address)
        _check_password(password)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM identities WHERE identity = ?", (addr,)).fetchone():
                raise AccountError(f"{addr} is already an alias of another account")
            try:
                db.execute(
                    "INSERT INTO accounts(address, password, limit_class, created, home) VALUES (?, ?, ?, ?, ?)",
                    (addr, _HASHER.hash(password), limit_class, time.time(), home),
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
            override.check()
            self._update(
                address, "per_minute = ?, burst = ?, per_day = ?", (override.per_minute, override.burst, override.per_day)
            )

    def set_quota(self, address: str, storage: int | None, messages: int | None) -> None:
        """Set the account's mail quota override (None: back to the limit class's default; 0: unlimited)."""
        check_quota(storage, messages)
        self._update(address, "quota_storage = ?, quota_messages = ?", (storage, messages))

    def set_admin(self, address: str, admin: bool) -> None:
        """Grant or revoke the web console's operator role."""
        self._update(address, "admin = ?", (int(admin),))

    def set_home(self, address: str, home: str) -> None:
        """Set the box that holds the account's Maildir (`appliance user move` flips it last)."""
        self._update(address, "home = ?", (home,))

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

    # --- export / import (`appliance db export|import`, appliance/accounts_transfer.py) ---------

    def export_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """Every account row by column name (password as its stored hash) and every identity."""
        with self._tx() as db:  # one snapshot of both tables
            cur = db.execute("SELECT * FROM accounts ORDER BY address")
            names = [d[0] for d in cur.description]
            accounts = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
            ids = [{"identity": i, "address": a}
                   for i, a in db.execute("SELECT identity, address FROM identities ORDER BY identity")]
        return accounts, ids

    def import_rows(self, accounts: list[dict[str, Any]], identities: list[dict[str, str]]) -> None:
        """Insert the rows in one transaction; nothing is written if one address already exists here."""
        with self._tx() as db:
            have = {row[1] for row in db.execute("PRAGMA table_info(accounts)")}
            lost = sorted({c for a in accounts for c, v in a.items() if c not in have and v not in (None, False, "")})
            if lost:  # a column this box's schema lacks, with a value in it: importing would drop it
                raise AccountError(f"this box's accounts database has no column {', '.join(lost)}: nothing imported")
            clash = [a["address"] for a in accounts
                     if db.execute("SELECT 1 FROM accounts WHERE address = ?", (a["address"],)).fetchone()]
            clash += [i["identity"] for i in identities
                      if db.execute("SELECT 1 FROM identities WHERE identity = ?", (i["identity"],)).fetchone()]
            if clash:
                raise AccountError(f"{len(clash)} address(es) exist here already, nothing imported: "
                                   + ", ".join(clash[:10]) + (" ..." if len(clash) > 10 else ""))
            for a in accounts:
                cols = [c for c in a if c in have]
                db.execute(f"INSERT INTO accounts({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                           [a[c] for c in cols])
            db.executemany("INSERT INTO identities(identity, address) VALUES (?, ?)",
                           [(i["identity"], i["address"]) for i in identities])


def _check_password(password: str) -> None:
    if len(password) < 8:
        raise AccountError("password too short: at least 8 characters")
    if any(c in password for c in "\r\n\0"):
        raise AccountError("password must not contain CR, LF or NUL")
