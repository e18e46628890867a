"""`appliance user move ADDRESS BOX`: copy an account's Maildir to another box, UIDs kept (docs/fleet.md).

The UIDs, UIDVALIDITY, flags and MODSEQs live in the account's index (appliance/mailstore/index.py,
one SQLite file per account, ``appliance-index.sqlite``), which refers to the message files by
their stem (the name before ``:2,``), never by an absolute path. So a copy of the message files
and a consistent snapshot of the index is the same mailbox on the other box: same UIDVALIDITY,
same UIDs, and clients keep their caches. The index is copied with SQLite's online backup API
(a consistent snapshot even while the access service has it open in WAL mode), never as a file
(a plain copy of a WAL database can be torn); its -wal/-shm files are therefore not copied.

Order: a first copy while the customer's sessions go on; a hold at this box's access service
(`Hold`, services/access/moves.py), which ends every session of the account and refuses new logins
for it, so nothing but the relay writes the Maildir any more; a final copy (`sync_maildir`: the
index again, the files added or renamed since, the ones gone removed), so flags and expunges made
during the first copy are carried over; a check that the hold is still there (a restarted access
service forgot it: the move stops, `home` unchanged); the flip of `home` (every box then routes
mail and logins there); a copy of what the relay delivered meanwhile (into the target's new/, where
the access service finds it and gives it the next UIDs); the release; after a short wait, that copy
once more (deliveries that looked up `home` just before the flip). The old Maildir is kept: the
operator deletes it once satisfied. The target is a directory this box sees (`LocalMaildir`) or a
box reached over SSH with rsync (`RemoteMaildir`, appliance/homemove_ssh.py): the same steps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from appliance.mailstore.uidmap import UID_MAP

INDEX_SUFFIXES = (".sqlite", ".sqlite-wal", ".sqlite-shm", ".sqlite-journal")


class MoveError(Exception):
    """The move cannot proceed; nothing was changed (the message says why)."""


@dataclass
class Copied:
    files: int = 0
    bytes: int = 0
    indexes: int = 0
    # The message files (paths relative to the Maildir, in a new/ or cur/) the copy holds: the late
    # catch-ups send only files not in it. Judged on the source, because after the flip the target's
    # access service renames what it finds (the UIDs go into the names), so a stem missing there
    # does not mean a message missing there.
    seen: set[str] = field(default_factory=set)


def _stem(name: str) -> str:
    return name.split(":2,", 1)[0]


def copy_maildir(src: Path, dst: Path) -> Copied:
    """Copy the Maildir SRC (all folders, the index by backup) to DST, which must not exist yet."""
    if not (src / "cur").is_dir():
        raise MoveError(f"{src}: no Maildir there (is this the account's home box?)")
    if dst.exists() and any(dst.iterdir()):
        raise MoveError(f"{dst}: exists and is not empty: nothing copied (remove it or pick another box)")
    tmp = dst.with_name(dst.name + ".moving")
    if tmp.exists():
        shutil.rmtree(tmp)  # a previous move that failed half-way: its partial copy is ours to drop
    # The first copy is the final copy's walk into an empty directory; files expunged or renamed
    # while it walks are skipped, and the final copy under the hold sees them.
    out = sync_maildir(src, tmp)
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


def sync_maildir(src: Path, dst: Path) -> Copied:
    """Make DST, a copy of SRC made earlier, the same again: every index by backup, the message
    files SRC gained (or renamed, for a flag change) since, and the ones it lost removed from DST.
    Run under a hold, when no session writes SRC."""
    out = Copied()
    for root, _dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True, mode=0o700)
        _same_owner(Path(root), dst / rel)
        present = set(files)
        for name in files:
            s, d = Path(root) / name, dst / rel / name
            if name.endswith(INDEX_SUFFIXES):
                if name.endswith(".sqlite"):
                    _backup(s, d)
                    _same_owner(s, d)
                    out.indexes += 1
                continue
            if d.exists() and name != UID_MAP:
                _seen(out, rel, name)
                continue  # a message file is never rewritten in place: same name, same content
            try:
                shutil.copy2(s, d)
            except FileNotFoundError:
                continue  # the relay moved it (new/ to cur/ is the access service's, held): catch_up sees it
            _same_owner(s, d)
            _seen(out, rel, name)
            out.files += 1
            out.bytes += d.stat().st_size
        if rel.name in ("new", "cur", "tmp"):
            for name in os.listdir(dst / rel):
                if name not in present and not name.endswith(INDEX_SUFFIXES):
                    (dst / rel / name).unlink()  # expunged, or renamed by a flag change, since the first copy
    return out


def _seen(out: Copied, rel: Path, name: str) -> None:
    if rel.name in ("new", "cur"):
        out.seen.add(str(rel / name))


def message_files(src: Path) -> set[str]:
    """Every message file of SRC's new/ and cur/ folders, as paths relative to SRC."""
    found = set()
    for root, _dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        if rel.name in ("new", "cur"):
            found.update(str(rel / n) for n in files if not n.endswith(INDEX_SUFFIXES))
    return found


def late_arrivals(src: Path, seen: set[str]) -> list[str]:
    """The message files of SRC not in SEEN (mail the relay delivered here after the copy's walk)."""
    return sorted(message_files(src) - seen)


def late_target(rel: str) -> Path:
    """Where a late arrival goes on the target: its folder's new/, under its stem (the flags a name
    may carry are the old box's business; the target gives it the next UID)."""
    p = Path(rel)
    return p.parent.parent / "new" / _stem(p.name)


def catch_up(src: Path, dst: Path, seen: set[str]) -> int:
    """Copy into DST every message file of SRC not in SEEN (each into its folder's new/), adding
    it to SEEN; the number copied. Run once under the hold right after the flip, and once more
    after a short wait for deliveries that looked up `home` before the flip."""
    copied = 0
    for rel in late_arrivals(src, seen):
        target = dst / late_target(rel)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            if not target.exists():
                shutil.copy2(src / rel, target)
                copied += 1
        except FileNotFoundError:
            continue
        seen.add(rel)
    return copied


class Hold:
    """A hold on ADDRESS at this box's access service (services/access/moves.py): while this object's
    connection is open, no session on this box writes the account's Maildir."""

    def __init__(self, run_dir: str, address: str, wait: float = 60.0) -> None:
        self.address = address
        path = Path(run_dir) / "access-moves.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(wait + 30)  # the service answers within WAIT seconds, by its own bound
        try:
            self.sock.connect(str(path))
        except OSError as exc:
            self.sock.close()
            raise MoveError(f"{path}: cannot reach the access service to end the account's sessions ({exc})") from None
        self.file = self.sock.makefile("rwb")
        reply = self._ask(f"HOLD {address} {wait:g}")
        if not reply.startswith("OK "):
            self.close()
            raise MoveError(f"the access service refused to hold {address}: {reply}")
        self.ended = int(reply.split()[1])

    def _ask(self, line: str) -> str:
        try:
            self.file.write(line.encode() + b"\n")
            self.file.flush()
            reply = self.file.readline().decode("utf-8", "replace").strip()
        except OSError as exc:
            reply = f"connection lost ({exc})"
        return reply or "connection closed (the access service restarted?)"

    def check(self) -> None:
        """Raise MoveError unless the hold is still ours (a restarted access service forgot it)."""
        reply = self._ask(f"CHECK {self.address}")
        if reply != "OK HELD":
            raise MoveError(f"the hold on {self.address} was lost: {reply}")

    def close(self) -> None:
        """Release the hold (closing the connection is what releases it)."""
        with contextlib.suppress(OSError):
            self.file.close()
        self.sock.close()


class LocalMaildir:
    """The target's Maildir as this box sees it (`--target-mail-dir`: the same machine, or a mount)."""

    def __init__(self, dst: Path) -> None:
        self.dst = dst

    def describe(self) -> str:
        return str(self.dst)

    def first_copy(self, src: Path) -> Copied:
        return copy_maildir(src, self.dst)

    def sync(self, src: Path) -> Copied:
        return sync_maildir(src, self.dst)

    def catch_up(self, src: Path, seen: set[str]) -> int:
        return catch_up(src, self.dst, seen)
