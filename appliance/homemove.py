"""`appliance user move ADDRESS BOX`: copy an account's Maildir to another box, UIDs kept (docs/fleet.md).

The UIDs, UIDVALIDITY, flags and MODSEQs live in the account's index (appliance/mailstore/index.py,
one SQLite file per account, ``appliance-index.sqlite``), which refers to the message files by
their stem (the name before ``:2,``), never by an absolute path. So a copy of the message files
and a consistent snapshot of the index is the same mailbox on the other box: same UIDVALIDITY,
same UIDs, and clients keep their caches. The index is copied with SQLite's online backup API
(a consistent snapshot even while the access service has it open in WAL mode), never as a file
(a plain copy of a WAL database can be torn); its -wal/-shm files are therefore not copied.

Order: copy, flip `home` (every box then routes mail and logins there), then copy again what
arrived on the old box during the first copy (into the target's new/, where the access service
finds it and gives it the next UIDs). The old Maildir is kept: the operator deletes it once
satisfied. Flag changes made in a session on the old box during the move are not carried over.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

INDEX_SUFFIXES = (".sqlite", ".sqlite-wal", ".sqlite-shm", ".sqlite-journal")


class MoveError(Exception):
    """The move cannot proceed; nothing was changed (the message says why)."""


@dataclass
class Copied:
    files: int = 0
    bytes: int = 0
    indexes: int = 0


def _stem(name: str) -> str:
    return name.split(":2,", 1)[0]


def copy_maildir(src: Path, dst: Path) -> Copied:
    """Copy the Maildir SRC (all folders, the index by backup) to DST, which must not exist yet."""
    if not (src / "cur").is_dir():
        raise MoveError(f"{src}: no Maildir there (is this the account's home box?)")
    if dst.exists() and any(dst.iterdir()):
        raise MoveError(f"{dst}: exists and is not empty: nothing copied (remove it or pick another box)")
    out = Copied()
    tmp = dst.with_name(dst.name + ".moving")
    if tmp.exists():
        shutil.rmtree(tmp)  # a previous move that failed half-way: its partial copy is ours to drop
    for root, _dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (tmp / rel).mkdir(parents=True, exist_ok=True, mode=0o700)
        _same_owner(Path(root), tmp / rel)
        for name in files:
            s, d = Path(root) / name, tmp / rel / name
            if name.endswith(INDEX_SUFFIXES):
                if name.endswith(".sqlite"):
                    _backup(s, d)
                    _same_owner(s, d)
                    out.indexes += 1
                continue
            try:
                shutil.copy2(s, d)
            except FileNotFoundError:
                continue  # expunged or renamed (flag change) while we walked: the catch-up pass sees it
            _same_owner(s, d)
            out.files += 1
            out.bytes += d.stat().st_size
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.rmdir()  # empty (checked above)
    tmp.rename(dst)
    return out


def _same_owner(src: Path, dst: Path) -> None:
    """The copy belongs to whoever owned the original (the access service's user writes the index)."""
    if os.geteuid() == 0:
        st = src.stat()
        os.chown(dst, st.st_uid, st.st_gid)


def _backup(src: Path, dst: Path) -> None:
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def catch_up(src: Path, dst: Path) -> int:
    """Copy into DST's new/ every message file of SRC whose stem DST lacks (mail the old box took
    during the copy); the number copied."""
    copied = 0
    for root, _dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        if rel.name not in ("new", "cur"):
            continue
        have = set()
        for sub in ("new", "cur"):
            folder = dst / rel.parent / sub
            if folder.is_dir():
                have.update(_stem(n) for n in os.listdir(folder))
        for name in files:
            if _stem(name) in have:
                continue
            target = dst / rel.parent / "new"
            target.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                shutil.copy2(Path(root) / name, target / _stem(name))
            except FileNotFoundError:
                continue
            copied += 1
    return copied
