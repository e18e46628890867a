"""`appliance db migrate|status|export|import`: the accounts database of `state.backend` (docs/fleet.md).

`migrate` applies the versioned PostgreSQL migrations (appliance/migrations/pg) of the shared
store; the local SQLite store adds its columns itself when opened. `export`/`import` move every
account between the stores with its password hash (appliance/accounts_transfer.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

from appliance.accounts import AccountError, AccountStore, AccountsUnavailable
from appliance.accounts_pg import PgAccountStore
from appliance.cli import CommandError, config_from
from appliance.config import Config

Backend = Literal["local", "shared"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("db", help="accounts database: schema migrations, export and import")
    s = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)

    m = s.add_parser("migrate", help="bring the shared (PostgreSQL) accounts schema to this code's version")
    m.set_defaults(func=cmd_migrate)

    st = s.add_parser("status", help="backend, schema version and number of accounts")
    st.set_defaults(func=cmd_status)

    for verb, helptext in (("export", "write every account (password hashes included) to FILE, mode 0600"),
                           ("import", "add every account of FILE (an export) to the database; all or none")):
        x = s.add_parser(verb, help=helptext)
        x.add_argument("file", type=Path)
        x.add_argument("--backend", choices=("local", "shared"),
                       help="the store to use instead of state.backend (to move a box from one to the other)")
        x.set_defaults(func=cmd_export if verb == "export" else cmd_import)


def _store(cfg: Config, backend: Backend) -> AccountStore | PgAccountStore:
    if backend == "local":
        return AccountStore(cfg.paths.accounts_db)
    if not cfg.state.postgres_url:
        raise CommandError("key state.postgres_url: empty, so there is no shared accounts database to use")
    return PgAccountStore.from_config(cfg)


def _connect(cfg: Config):  # type: ignore[no-untyped-def]
    import psycopg

    from appliance.accounts_pg import connect

    if not cfg.state.postgres_url:
        raise CommandError("key state.postgres_url: empty, so there is no shared accounts database to migrate")
    try:
        return connect(cfg.state.postgres_url, cfg.state.password("postgres"))
    except psycopg.Error as exc:
        raise CommandError(f"state.postgres_url: cannot connect: {str(exc).strip().splitlines()[0]}") from None


def cmd_migrate(args: argparse.Namespace) -> int:
    from appliance.accounts_pg import MigrationError, migrate

    cfg = config_from(args)
    if cfg.state.backend == "local":
        AccountStore(cfg.paths.accounts_db).close()  # opening adds any missing column
        print(f"state.backend is local: {cfg.paths.accounts_db} is up to date (SQLite migrates itself when opened)")
        return 0
    conn = _connect(cfg)
    try:
        before, after = migrate(conn)
    except MigrationError as exc:
        raise CommandError(str(exc)) from None
    finally:
        conn.close()
    if before == after:
        print(f"accounts schema already at version {after}; nothing to do")
    else:
        print(f"accounts schema migrated from version {before} to {after}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from appliance.accounts_pg import code_version, schema_version

    cfg = config_from(args)
    if cfg.state.backend == "local":
        store = AccountStore(cfg.paths.accounts_db)
        try:
            print(f"backend local: {cfg.paths.accounts_db}, {len(store.list())} account(s)")
        finally:
            store.close()
        return 0
    conn = _connect(cfg)
    try:
        have = schema_version(conn)
    finally:
        conn.close()
    print(f"backend shared: schema version {have} (this code: {code_version()})")
    if have != code_version():
        raise CommandError("schema version differs from this code's: run `appliance db migrate`"
                           if have < code_version() else "the database is newer than this code: upgrade the appliance")
    pg = PgAccountStore.from_config(cfg)
    try:
        print(f"{len(pg.list())} account(s)")
    except AccountsUnavailable as exc:
        raise CommandError(str(exc)) from None
    finally:
        pg.close()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from appliance.accounts_transfer import TransferError, export_data, write_file

    cfg = config_from(args)
    backend: Backend = args.backend or cfg.state.backend
    store = _store(cfg, backend)
    try:
        data = export_data(store, backend)
        write_file(args.file, data)
    except (AccountsUnavailable, TransferError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
    print(f"exported {len(data['accounts'])} account(s), {len(data['identities'])} alias(es) "
          f"from the {backend} store to {args.file}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from appliance.accounts_transfer import TransferError, import_file

    cfg = config_from(args)
    backend: Backend = args.backend or cfg.state.backend
    store = _store(cfg, backend)
    try:
        n = import_file(store, args.file)
    except (AccountError, AccountsUnavailable, TransferError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
    print(f"imported {n} account(s) from {args.file} into the {backend} store")
    return 0
