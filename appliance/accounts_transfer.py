"""`appliance db export|import`: move every account between the local (SQLite) and shared (PostgreSQL) stores.

The file is JSON: every account row by column name, passwords as their stored argon2 hashes
(carried as they are, never re-hashed: nobody has to choose a new password), and every identity.
It holds password hashes, so it is written mode 0600. An import is one transaction in the
target store: all accounts or none, and it refuses (naming them) addresses that already exist there.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from appliance.accounts import AccountStore
from appliance.accounts_pg import PgAccountStore
from appliance.addresses import AddressError, normalize_address

FORMAT = "isp-mail-appliance accounts"
VERSION = 1
# A file larger than this is not an export of ours (about 2 million accounts); refuse before reading it.
MAX_FILE = 1 << 30


class TransferError(Exception):
    """The file cannot be written or read as an export; the message names the file and why."""


def _address(v: str) -> str:
    try:
        addr = normalize_address(v)
    except AddressError as exc:
        raise ValueError(str(exc)) from None
    if addr != v:
        raise ValueError(f"not in normal form (expected {addr!r})")
    return addr


class ExportedAccount(BaseModel):
    """One account row as exported. Unknown keys are refused: importing them would lose them."""

    model_config = ConfigDict(extra="forbid", strict=False)
    address: str
    password: str
    disabled: bool = False
    limit_class: str = "default"
    per_minute: float | None = None
    burst: int | None = None
    per_day: int | None = None
    held: bool = False
    held_reason: str = ""
    held_since: float | None = None
    created: float
    quota_storage: int | None = None
    quota_messages: int | None = None
    admin: bool = False
    home: str = ""  # the fleet box holding the Maildir (migration 0002; older exports lack it)

    @field_validator("address")
    @classmethod
    def _addr(cls, v: str) -> str:
        return _address(v)

    @field_validator("password")
    @classmethod
    def _hash(cls, v: str) -> str:
        # Only argon2 hashes (what both stores write); never a clear password.
        if not v.startswith("$argon2"):
            raise ValueError("not an argon2 hash")
        return v


class ExportedIdentity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    identity: str
    address: str

    @field_validator("identity", "address")
    @classmethod
    def _norm(cls, v: str) -> str:
        return _address(v)


def export_data(store: AccountStore | PgAccountStore, source: str) -> dict[str, Any]:
    accounts, identities = store.export_rows()
    return {
        "format": FORMAT,
        "version": VERSION,
        "source": source,
        "exported": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        # Through the model: SQLite's 0/1 become booleans, and the file has every column.
        "accounts": [ExportedAccount.model_validate(a).model_dump() for a in accounts],
        "identities": identities,
    }


def write_file(path: Path, data: dict[str, Any]) -> None:
    """Write DATA to PATH (mode 0600, whole or not at all); refuses to overwrite a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # fails if PATH exists: an earlier export is never overwritten
    except FileExistsError:
        raise TransferError(f"{path}: exists already; choose another file name") from None
    except OSError as exc:
        raise TransferError(f"{path}: cannot write: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def read_file(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The checked rows of an export file; TransferError naming the first problem."""
    try:
        if path.stat().st_size > MAX_FILE:
            raise TransferError(f"{path}: larger than {MAX_FILE} bytes: not an accounts export")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TransferError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise TransferError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise TransferError(f"{path}: not an accounts export (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise TransferError(f"{path}: export version {data.get('version')!r}; this code reads version {VERSION}")
    raw_accounts, raw_ids = data.get("accounts"), data.get("identities")
    if not isinstance(raw_accounts, list) or not isinstance(raw_ids, list):
        raise TransferError(f"{path}: \"accounts\" and \"identities\" must be lists")
    accounts, identities = [], []
    for n, row in enumerate(raw_accounts):
        try:
            accounts.append(ExportedAccount.model_validate(row).model_dump())
        except ValidationError as exc:
            raise TransferError(f"{path}: accounts[{n}]: {_first_error(exc)}") from None
    for n, row in enumerate(raw_ids):
        try:
            identities.append(ExportedIdentity.model_validate(row).model_dump())
        except ValidationError as exc:
            raise TransferError(f"{path}: identities[{n}]: {_first_error(exc)}") from None
    addresses = [a["address"] for a in accounts]
    if len(set(addresses)) != len(addresses):
        raise TransferError(f"{path}: an address appears twice in \"accounts\"")
    known = set(addresses)
    for i in identities:
        if i["address"] not in known:
            raise TransferError(f"{path}: identity {i['identity']} belongs to {i['address']}, not in the file")
        if i["identity"] in known:
            raise TransferError(f"{path}: identity {i['identity']} is also an account")
    return accounts, identities


def _first_error(exc: ValidationError) -> str:
    e = exc.errors()[0]
    where = ".".join(str(x) for x in e["loc"])
    return f"{where}: {e['msg'].removeprefix('Value error, ')}"


def import_file(store: AccountStore | PgAccountStore, path: Path) -> int:
    """Import PATH into STORE; the number of accounts imported. AccountError if one exists already."""
    accounts, identities = read_file(path)
    store.import_rows(accounts, identities)
    return len(accounts)
