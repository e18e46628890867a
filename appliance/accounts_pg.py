"""Customer accounts on PostgreSQL (`[state] backend = "shared"`): one database for a fleet of boxes.

The same interface and meaning as the SQLite ``AccountStore`` (appliance/accounts.py): accounts,
identities, limit class and override, quotas, holds, argon2id hashes. Callers get either store
from ``appliance.accounts.open_accounts(cfg)`` and never know which one it is.

Why it is built this way:
- One psycopg connection per thread (as the SQLite store): Twisted's pool, the relay's auth and
  reader pools and the brake's writer thread each have their own, opened at first use.
- PostgreSQL unreachable (or the schema not at this code's version) raises ``AccountsUnavailable``:
  logins answer ``NO [UNAVAILABLE]`` / ``-ERR [SYS/TEMP]`` / ``454 4.7.0``, never "wrong password".
  Connects and statements have short timeouts so no session waits long; the next call reconnects,
  so the store recovers by itself when the database is back.
- Writes take one transaction-scoped advisory lock: they are serialised like SQLite's
  ``BEGIN IMMEDIATE``, so "is it an alias already?" and the insert cannot race between boxes.
  Writes are rare (operator commands, holds, rehashes); reads never take it.
- Schema versions live in appliance/migrations/pg and are applied by ``migrate`` only
  (`appliance db migrate`), never implicitly by a service.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from prometheus_client import Counter, Gauge

from appliance.accounts import (
    _HASHER,
    Account,
    AccountError,
    AccountsUnavailable,
    LimitOverride,
    _check_password,
    check_quota,
    dummy_hash,
)
from appliance.addresses import AddressError, normalize_address

if TYPE_CHECKING:
    from appliance.config import Config

log = logging.getLogger("appliance.accounts.pg")
T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).parent / "migrations" / "pg"
CONNECT_TIMEOUT = 2  # seconds; libpq's connect_timeout is whole seconds, at least 2
STATEMENT_TIMEOUT_MS = 5000  # a statement stuck behind a lock on the server fails after this
TCP_USER_TIMEOUT_MS = 5000  # a request the server host does not acknowledge (it vanished) fails after this
# After a failed connect, calls that need a new connection fail at once for this long instead of each
# waiting out a connect timeout (a dead database costs one timeout per interval, not one per login).
RETRY_INTERVAL = 1.0
# Advisory lock keys (any 64-bit number unique to this use): writes, and migrations.
WRITE_LOCK = 0x6170706C_61636374  # "applacct"
MIGRATE_LOCK = 0x6170706C_6D696772  # "applmigr"

STORE_UP = Gauge("appliance_accounts_store_up",
                 "1 when the last call to the shared accounts database (PostgreSQL) worked, 0 when it failed")
STORE_UNAVAILABLE = Counter("appliance_accounts_store_unavailable_total",
                            "Calls to the shared accounts database (PostgreSQL) that failed: unreachable, "
                            "timed out or schema not at this code's version")

# The columns of one account row, in export order; the SQLite store has the same names.
COLUMNS = ("address", "password", "disabled", "limit_class", "per_minute", "burst", "per_day", "held",
           "held_reason", "held_since", "created", "quota_storage", "quota_messages", "admin", "home")
_SELECT = ("SELECT address, disabled, limit_class, per_minute, burst, per_day, held, held_reason, held_since,"
           " created, quota_storage, quota_messages, admin, home FROM accounts")


class MigrationError(Exception):
    """`appliance db migrate` cannot proceed; the message names why."""


def migrations(directory: Path = MIGRATIONS_DIR) -> list[tuple[int, str, str]]:
    """(version, name, SQL) of every NNNN_name.sql, in order; versions must run 1, 2, 3... without a gap."""
    out = []
    for p in sorted(directory.glob("*.sql")):
        m = re.fullmatch(r"(\d{4})_([a-z0-9_]+)\.sql", p.name)
        if not m:
            raise MigrationError(f"{p}: migration files are named NNNN_name.sql")
        out.append((int(m.group(1)), m.group(2), p.read_text(encoding="utf-8")))
    for i, (v, _, _) in enumerate(out, start=1):
        if v != i:
            raise MigrationError(f"{directory}: migration {i:04d} missing (found {v:04d})")
    return out


def code_version() -> int:
    """The schema version this code expects: the last migration in the repository."""
    return len(migrations())


def connect(url: str, password: str | None) -> psycopg.Connection[Any]:
    """A new autocommit connection with short timeouts (libpq keywords, libpq docs 34.1.2)."""
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": CONNECT_TIMEOUT,
        "application_name": "appliance",
        "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        # A server host that vanished without a FIN or RST: noticed within ~5 s whether a request is
        # unacknowledged (TCP_USER_TIMEOUT) or a reply is awaited (keepalives: 3 s idle, 2 probes 1 s apart).
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        "keepalives": 1, "keepalives_idle": 3, "keepalives_interval": 1, "keepalives_count": 2,
    }
    if password is not None:
        kwargs["password"] = password
    return psycopg.connect(url, **kwargs)


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The database's applied version; 0 for a database never migrated."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    got = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(got[0]) if got else 0


def migrate(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """Apply the pending migrations in one transaction; (version before, version after).

    Idempotent (a database at the code's version is left alone). Refuses a database newer than
    the code: an older box must not write to a schema it does not know. Two boxes migrating at
    once are serialised by an advisory lock; the second finds nothing left to do.
    """
    wanted = migrations()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                     " name TEXT NOT NULL, applied TIMESTAMPTZ NOT NULL DEFAULT now())")
        before = schema_version(conn)
        if before > len(wanted):
            raise MigrationError(f"the database is at schema version {before}, newer than this code's "
                                 f"{len(wanted)}: upgrade the appliance on this box first")
        for version, name, sql in wanted[before:]:
            conn.execute(sql.encode())  # no parameters: several statements in one go
            conn.execute("INSERT INTO schema_version(version, name) VALUES (%s, %s)", (version, name))
            log.info("applied migration %04d_%s", version, name)
    return before, len(wanted)


def _unavailable(exc: Exception) -> AccountsUnavailable:
    STORE_UP.set(0)
    STORE_UNAVAILABLE.inc()
    # libpq's messages name host and port, never the password.
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return AccountsUnavailable(f"accounts database unavailable: {first}")


_CONN_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


class PgAccountStore:
    """The shared accounts database. Cheap to open (connects at first use); each operation is its own transaction."""

    backend = "shared"

    def __init__(self, url: str, password: str | None = None) -> None:
        self.url = url
        self._password = password
        self._local = threading.local()
        self._conns: list[psycopg.Connection[Any]] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        self._down_until = 0.0  # monotonic time before which no new connection is tried
        self._down_why = ""

    @classmethod
    def from_config(cls, cfg: Config) -> PgAccountStore:
        return cls(cfg.state.postgres_url, cfg.state.password("postgres"))

    # --- connections -------------------------------------------------------------------

    def _connection(self) -> tuple[psycopg.Connection[Any], bool]:
        """This thread's connection and whether it was just made; AccountsUnavailable if none can be had."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed:
            return conn, False
        if self._closed:
            raise AccountError("the accounts store is closed")
        if time.monotonic() < self._down_until:
            STORE_UNAVAILABLE.inc()
            raise AccountsUnavailable(self._down_why)
        try:
            conn = connect(self.url, self._password)
            have, want = schema_version(conn), code_version()
        except _CONN_ERRORS as exc:
            err = _unavailable(exc)
            self._down_until, self._down_why = time.monotonic() + RETRY_INTERVAL, str(err)
            raise err from None
        if have != want:
            conn.close()
            STORE_UP.set(0)
            STORE_UNAVAILABLE.inc()
            raise AccountsUnavailable(f"accounts database at schema version {have}, this code needs {want}: "
                                      "run `appliance db migrate`" if have < want else
                                      f"accounts database at schema version {have}, newer than this code's "
                                      f"{want}: upgrade the appliance")
        with self._conns_lock:
            self._conns.append(conn)
        self._local.conn = conn
        return conn, True

    def _drop(self, conn: psycopg.Connection[Any]) -> None:
        self._local.conn = None
        with self._conns_lock:
            if conn in self._conns:
                self._conns.remove(conn)
        try:
            conn.close()
        except Exception:  # a broken connection may fail to close; it is gone either way
            pass

    def _call(self, fn: Callable[[psycopg.Connection[Any]], T], *, retry: bool) -> T:
        """Run FN on this thread's connection. A connection that went stale (the server restarted)
        is replaced and FN run again once, when RETRY says FN may run twice (reads)."""
        for attempt in (0, 1):
            conn, fresh = self._connection()
            try:
                result = fn(conn)
            except _CONN_ERRORS as exc:
                self._drop(conn)
                if fresh or attempt or not retry:
                    raise _unavailable(exc) from None
                continue
            STORE_UP.set(1)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        return self._call(fn, retry=True)

    def _write(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        # A write is not repeated (its COMMIT may have landed); a cheap ping first replaces a stale
        # connection, so a write right after the database came back does not fail for it.
        self._read(lambda c: c.execute("SELECT 1"))

        def tx(conn: psycopg.Connection[Any]) -> T:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                return fn(conn)

        return self._call(tx, retry=False)

    def ping(self) -> int:
        """The database's schema version if it answers at this code's version (AccountsUnavailable if not)."""
        return self._read(schema_version)

    def close(self) -> None:
        with self._conns_lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # closing is best effort
                pass

    # --- queries -------------------------------------------------------------------

    @staticmethod
    def _account(conn: psycopg.Connection[Any], row: tuple[Any, ...],
                 ids: tuple[str, ...] | None = None) -> Account:
        if ids is None:
            ids = tuple(r[0] for r in conn.execute(
                "SELECT identity FROM identities WHERE address = %s ORDER BY identity", (row[0],)))
        return Account(
            address=row[0], identities=ids, disabled=bool(row[1]), limit_class=row[2],
            override=LimitOverride(row[3], row[4], row[5]) if row[3] is not None else None,
            held=bool(row[6]), held_reason=row[7], held_since=row[8], created=row[9],
            quota_storage=row[10], quota_messages=row[11], admin=bool(row[12]), home=row[13],
        )

    def get(self, address: str) -> Account | None:
        try:
            addr = normalize_address(address)
        except AddressError:
            return None

        def q(conn: psycopg.Connection[Any]) -> Account | None:
            row = conn.execute(_SELECT + " WHERE address = %s", (addr,)).fetchone()
            return None if row is None else self._account(conn, row)

        return self._read(q)

    def _many(self, where: str) -> list[Account]:
        # Two queries whatever the number of accounts (one per account would be a round trip each).
        def q(conn: psycopg.Connection[Any]) -> list[Account]:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                rows = conn.execute(_SELECT + where + " ORDER BY address").fetchall()
                ids: dict[str, list[str]] = {}
                for identity, address in conn.execute("SELECT identity, address FROM identities ORDER BY identity"):
                    ids.setdefault(address, []).append(identity)
            return [self._account(conn, r, tuple(ids.get(r[0], ()))) for r in rows]

        return self._read(q)

    def list(self) -> list[Account]:
        return self._many("")

    def held(self) -> list[Account]:
        return self._many(" WHERE held")

    def owner_of(self, identity: str) -> str | None:
        """The account that may send as IDENTITY (its primary address or an alias)."""
        i = identity.lower()

        def q(conn: psycopg.Connection[Any]) -> str | None:
            row = conn.execute("SELECT address FROM accounts WHERE address = %s UNION ALL"
                               " SELECT address FROM identities WHERE identity = %s LIMIT 1", (i, i)).fetchone()
            return str(row[0]) if row else None

        return self._read(q)

    def authenticate(self, login: str, password: str) -> Account | None:
        """The account if LOGIN/PASSWORD are right and it is enabled, else None; AccountsUnavailable
        when the database cannot say (never a "wrong password" for that)."""
        try:
            addr = normalize_address(login)
        except AddressError:
            addr = ""
        row = self._read(lambda c: c.execute("SELECT password FROM accounts WHERE address = %s", (addr,)).fetchone())
        stored = row[0] if row else dummy_hash()
        try:
            _HASHER.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None:
            return None
        if _HASHER.check_needs_rehash(stored):
            # As in SQLite: only over the hash just verified, and the login does not depend on it.
            fresh = _HASHER.hash(password)
            try:
                self._write(lambda c: c.execute("UPDATE accounts SET password = %s WHERE address = %s"
                                                " AND password = %s", (fresh, addr, stored)))
            except AccountsUnavailable as exc:
                log.warning("password rehash for %s postponed: %s", addr, exc)
        account = self.get(addr)
        if account is None or account.disabled:
            return None
        return account

    # --- changes -------------------------------------------------------------------

    def add(self, address: str, password: str, limit_class: str = "default", admin: bool = False,
            home: str = "") -> Account:
        addr = normalize_address(address)
        _check_password(password)
        hashed = _HASHER.hash(password)  # before the transaction: argon2 is slow on purpose

        def w(conn: psycopg.Connection[Any]) -> None:
            if conn.execute("SELECT 1 FROM identities WHERE identity = %s", (addr,)).fetchone():
                raise AccountError(f"{addr} is already an alias of another account")
            if conn.execute("SELECT 1 FROM accounts WHERE address = %s", (addr,)).fetchone():
                raise AccountError(f"account {addr} already exists")
            conn.execute("INSERT INTO accounts(address, password, limit_class, created, admin, home)"
                         " VALUES (%s, %s, %s, %s, %s, %s)", (addr, hashed, limit_class, time.time(), admin, home))

        self._write(w)
        return self._must(addr)

    def delete(self, address: str) -> None:
        self._change(address, "DELETE FROM accounts WHERE address = %s", ())

    def set_password(self, address: str, password: str) -> None:
        _check_password(password)
        self._update(address, "password = %s", (_HASHER.hash(password),))

    def set_disabled(self, address: str, disabled: bool) -> None:
        self._update(address, "disabled = %s", (disabled,))

    def set_admin(self, address: str, admin: bool) -> None:
        self._update(address, "admin = %s", (admin,))

    def set_limit_class(self, address: str, limit_class: str) -> None:
        self._update(address, "limit_class = %s", (limit_class,))

    def set_limits(self, address: str, override: LimitOverride | None) -> None:
        if override is None:
            self._update(address, "per_minute = NULL, burst = NULL, per_day = NULL", ())
            return
        override.check()
        self._update(address, "per_minute = %s, burst = %s, per_day = %s",
                     (override.per_minute, override.burst, override.per_day))

    def set_quota(self, address: str, storage: int | None, messages: int | None) -> None:
        """Set the account's mail quota override (None: back to the limit class's default; 0: unlimited)."""
        check_quota(storage, messages)
        self._update(address, "quota_storage = %s, quota_messages = %s", (storage, messages))

    def set_home(self, address: str, home: str) -> None:
        """Set the box that holds the account's Maildir (`appliance user move` flips it last)."""
        self._update(address, "home = %s", (home,))

    def hold(self, address: str, reason: str) -> bool:
        """Hold the account (abuse brake). True if it was not held before."""
        addr = normalize_address(address)
        return self._write(lambda c: c.execute(
            "UPDATE accounts SET held = true, held_reason = %s, held_since = %s WHERE address = %s AND NOT held",
            (reason, time.time(), addr)).rowcount == 1)

    def release(self, address: str) -> None:
        self._update(address, "held = false, held_reason = '', held_since = NULL", ())

    def add_alias(self, address: str, identity: str) -> None:
        addr = normalize_address(address)
        ident = normalize_address(identity)

        def w(conn: psycopg.Connection[Any]) -> None:
            if not conn.execute("SELECT 1 FROM accounts WHERE address = %s", (addr,)).fetchone():
                raise AccountError(f"no account {addr}")
            if conn.execute("SELECT 1 FROM accounts WHERE address = %s", (ident,)).fetchone():
                raise AccountError(f"{ident} is an account of its own")
            if conn.execute("SELECT 1 FROM identities WHERE identity = %s", (ident,)).fetchone():
                raise AccountError(f"{ident} is already an alias")
            conn.execute("INSERT INTO identities(identity, address) VALUES (%s, %s)", (ident, addr))

        self._write(w)

    def del_alias(self, address: str, identity: str) -> None:
        addr = normalize_address(address)
        ident = normalize_address(identity)
        if not self._write(lambda c: c.execute("DELETE FROM identities WHERE identity = %s AND address = %s",
                                               (ident, addr)).rowcount):
            raise AccountError(f"{ident} is not an alias of {addr}")

    def _update(self, address: str, assignment: str, params: tuple[object, ...]) -> None:
        self._change(address, f"UPDATE accounts SET {assignment} WHERE address = %s", params)

    def _change(self, address: str, sql: str, params: tuple[object, ...]) -> None:
        addr = normalize_address(address)
        if self._write(lambda c: c.execute(sql.encode(), (*params, addr)).rowcount) == 0:
            raise AccountError(f"no account {addr}")

    def _must(self, addr: str) -> Account:
        a = self.get(addr)
        if a is None:  # pragma: no cover - just inserted
            raise AccountError(f"no account {addr}")
        return a

    # --- export / import (appliance/accounts_transfer.py) ------------------------------

    def export_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """Every account row (password as its stored hash) and every identity, in one snapshot."""
        def q(conn: psycopg.Connection[Any]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                accts = [dict(zip(COLUMNS, r, strict=True)) for r in conn.execute(
                    f"SELECT {', '.join(COLUMNS)} FROM accounts ORDER BY address").fetchall()]
                ids = [{"identity": i, "address": a} for i, a in conn.execute(
                    "SELECT identity, address FROM identities ORDER BY identity").fetchall()]
            return accts, ids

        return self._read(q)

    def import_rows(self, accounts: list[dict[str, Any]], identities: list[dict[str, str]]) -> None:
        """Insert the rows in one transaction; nothing is written if one address already exists here."""
        def w(conn: psycopg.Connection[Any]) -> None:
            wanted = [a["address"] for a in accounts] + [i["identity"] for i in identities]
            clash = [r[0] for r in conn.execute(
                "SELECT address FROM accounts WHERE address = ANY(%s) UNION"
                " SELECT identity FROM identities WHERE identity = ANY(%s) ORDER BY 1", (wanted, wanted))]
            if clash:
                raise AccountError(f"{len(clash)} address(es) exist here already, nothing imported: "
                                   + ", ".join(clash[:10]) + (" ..." if len(clash) > 10 else ""))
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO accounts({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})",
                                [tuple(a[c] for c in COLUMNS) for a in accounts])
                cur.executemany("INSERT INTO identities(identity, address) VALUES (%s, %s)",
                                [(i["identity"], i["address"]) for i in identities])

        self._write(w)
