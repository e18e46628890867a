"""One Maildir folder with persistent UIDs, flags and keywords.

Layout (docs/ARCHITECTURE.md): the relay writes new mail into ``new/``; this
module owns everything else. Standard flags live in the Maildir file name's
info part (``:2,FRS``) so other Maildir tools see them; UIDs, the UIDVALIDITY
and keywords live in ``appliance-uidlist`` (the same idea as dovecot-uidlist):

    A1 V<uidvalidity> N<nextuid>
    <uid> <basename> <size-with-CRLF> [keyword ...]

New messages are appended to the list; expunges and keyword changes rewrite it
atomically (write a temporary file, fsync, rename). RFC 3501 2.3.1.1: UIDs are
strictly ascending and never reused within one UIDVALIDITY; the list is only
ever rebuilt with a new UIDVALIDITY when it is unreadable.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from appliance.mailstore.errors import MailstoreError

UIDLIST = "appliance-uidlist"
LOCKFILE = "appliance-uidlist.lock"
VALIDITY_FILE = "appliance-uidvalidity"
KEYWORDS_FILE = "appliance-keywords"  # every keyword ever used here (IMAP FLAGS keeps them, as Dovecot does)

# Maildir info letters (https://cr.yp.to/proto/maildir.html) <-> IMAP system flags.
FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "$Forwarded": "P", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
LETTER_FLAGS = {v: k for k, v in FLAG_LETTERS.items()}
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")

_counter = itertools.count(1)  # next() is atomic in CPython: writes run in worker threads
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072")


def _unique_name() -> str:
    now = time.time()
    return f"{int(now)}.M{int(now * 1e6) % 1_000_000}P{os.getpid()}Q{next(_counter)}.{_HOST}"


def crlf(data: bytes) -> bytes:
    """DATA with every line ending as CRLF (IMAP and POP sizes and octets are of this form)."""
    lf = data.count(b"\n")
    if lf == data.count(b"\r\n"):  # already CRLF throughout (APPENDed mail): no copy
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@dataclass
class Entry:
    uid: int
    base: str  # file name without the ":2," info part
    sub: str  # "cur" or "new"
    letters: str  # info flags, sorted
    size: int  # octets with CRLF line endings
    keywords: set[str] = field(default_factory=set)

    @property
    def filename(self) -> str:
        return f"{self.base}:2,{self.letters}" if self.sub == "cur" else self.base

    def flags(self) -> list[str]:
        out = [LETTER_FLAGS[c] for c in self.letters if c in LETTER_FLAGS]
        return out + sorted(self.keywords)


_UID_IN_NAME = re.compile(r",U=(\d+)(?:,|$)")


def known_uids(known: dict[str, tuple[int, int, set[str]]]) -> set[int]:
    return {v[0] for v in known.values()}


def _size_of(path: Path) -> int | None:
    """Octets of the file in CRLF form, or None if it vanished."""
    try:
        return len(crlf(path.read_bytes()))
    except FileNotFoundError:
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _split(name: str) -> tuple[str, str]:
    base, sep, info = name.partition(":2,")
    return base, info if sep else ""


class Folder:
    """A Maildir directory. One instance per path per process (see Mailstore.folder)."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self._dir = str(path)
        self.name = name
        self.uidvalidity = 0
        self.next_uid = 1
        self.entries: dict[int, Entry] = {}
        self.recent: set[int] = set()  # RFC 3501 \Recent: new since some session last claimed them
        self.pending: set[int] = set()  # UIDs reserved by writes in progress
        self._stamp: tuple[int, int, int] | None = None
        self._lock_fd: int | None = None
        self._depth = 0
        self.sync()

    # --- locking and the list file ----------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # Re-entrant: add() syncs while it holds the lock.
        if self._lock_fd is None:
            self._lock_fd = os.open(self.path / LOCKFILE, os.O_RDWR | os.O_CREAT, 0o600)
        if self._depth == 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _read_list(self) -> dict[str, tuple[int, int, set[str]]]:
        known: dict[str, tuple[int, int, set[str]]] = {}
        try:
            lines = (self.path / UIDLIST).read_text().splitlines()
        except FileNotFoundError:
            lines = []
        header = lines[0].split() if lines else []
        if len(header) == 3 and header[0] == "A1" and header[1][:1] == "V" and header[2][:1] == "N":
            self.uidvalidity = int(header[1][1:])
            self.next_uid = max(self.next_uid, int(header[2][1:]))
            for line in lines[1:]:
                parts = line.split(" ")
                if len(parts) >= 3 and parts[0].isdigit():
                    uid = int(parts[0])
                    known[parts[1]] = (uid, int(parts[2]), set(parts[3:]))
                    self.next_uid = max(self.next_uid, uid + 1)
        else:
            # No list (new folder) or an unreadable one: start a new UIDVALIDITY so
            # clients drop their caches (RFC 3501 2.3.1.1).
            # The last value is kept apart so a rebuilt list never repeats it.
            last_file = self.path / VALIDITY_FILE
            try:
                last = int(last_file.read_text().strip() or 0)
            except (FileNotFoundError, ValueError):
                last = 0
            self.uidvalidity = max(int(time.time()), self.uidvalidity + 1, last + 1)
            last_file.write_text(f"{self.uidvalidity}\n")
            self.next_uid = 1
        return known

    def _write_list(self) -> None:
        tmp = self.path / (UIDLIST + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(f"A1 V{self.uidvalidity} N{self.next_uid}\n")
            for uid in sorted(self.entries):
                e = self.entries[uid]
                fh.write(" ".join([str(uid), e.base, str(e.size), *sorted(e.keywords)]) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path / UIDLIST)

    def _append_list(self, entries: Iterable[Entry], sync: bool = False) -> None:
        lines = "".join(" ".join([str(e.uid), e.base, str(e.size), *sorted(e.keywords)]) + "\n" for e in entries)
        # The header's N field is rewritten in place: it has fixed width only by luck,
        # so rewrite the whole file when the header would change length.
        p = self.path / UIDLIST
        try:
            with open(p, "r+") as fh:
                header = fh.readline()
                new_header = f"A1 V{self.uidvalidity} N{self.next_uid}\n"
                if len(header) != len(new_header):
                    raise ValueError
                fh.seek(0)
                fh.write(new_header)
                fh.seek(0, os.SEEK_END)
                fh.write(lines)
                fh.flush()
                if sync:  # keywords are only in the list; UIDs are also in the file names
                    os.fsync(fh.fileno())
        except (FileNotFoundError, ValueError):
            self._write_list()

    # --- synchronising with the directory --------------------------------------------

    def _dir_stamp(self) -> tuple[int, int, int]:
        return (os.stat(self.path / "new").st_mtime_ns, os.stat(self.path / "cur").st_mtime_ns,
                os.stat(self.path / UIDLIST).st_mtime_ns if (self.path / UIDLIST).exists() else 0)

    def sync(self, force: bool = False) -> bool:
        """Bring the in-memory view up to date with the directory. True when something changed."""
        try:
            stamp = self._dir_stamp()
        except FileNotFoundError:
            raise MailstoreError(f"mailbox {self.name} no longer exists") from None
        if stamp == self._stamp and not force:
            return False
        with self._locked():
            known = self._read_list()
            files: dict[str, tuple[str, str]] = {}
            for sub in ("cur", "new"):
                for name in os.listdir(self.path / sub):
                    if name.startswith("."):
                        continue
                    base, info = _split(name)
                    files[base] = (sub, info)
            entries: dict[int, Entry] = {}
            fresh: list[tuple[float, str]] = []
            listed = known_uids(known)
            for base, (sub, info) in files.items():
                if base in known:
                    uid, size, kws = known[base]
                    entries[uid] = Entry(uid, base, sub, info, size, kws)
                    continue
                m = _UID_IN_NAME.search(base)
                if m and int(m.group(1)) in self.pending:
                    continue  # a write in progress; its commit() makes it visible, in UID order
                if m and int(m.group(1)) not in entries and int(m.group(1)) not in listed:
                    # Recovery: the list lost this record (it is not fsynced on append), the
                    # name still carries the UID it was given (see add()).
                    uid = int(m.group(1))
                    size = _size_of(self.path / sub / (f"{base}:2,{info}" if sub == "cur" else base))
                    if size is not None:
                        entries[uid] = Entry(uid, base, sub, info, size)
                        self.next_uid = max(self.next_uid, uid + 1)
                    continue
                try:
                    mtime = os.stat(self.path / sub / (f"{base}:2,{info}" if sub == "cur" else base)).st_mtime
                except FileNotFoundError:
                    continue
                fresh.append((mtime, base))
            added: list[Entry] = []
            moved = False
            for _, base in sorted(fresh):  # delivery order
                sub, info = files[base]
                name = f"{base}:2,{info}" if sub == "cur" else base
                size = _size_of(self.path / sub / name)
                if size is None:
                    continue
                uid = self.next_uid
                self.next_uid += 1
                # Give the file its UID in its name and move it to cur/, so the UID survives
                # even if the (unsynced) list does not.
                new_base = f"{base},U={uid}"
                letters = "".join(sorted(info))
                try:
                    os.rename(self.path / sub / name, self.path / "cur" / f"{new_base}:2,{letters}")
                except FileNotFoundError:
                    continue
                moved = True
                e = Entry(uid, new_base, "cur", letters, size)
                entries[e.uid] = e
                added.append(e)
                if sub == "new":
                    self.recent.add(e.uid)
            if moved:
                _fsync_dir(self.path / "cur")
            removed = len(known) != len(entries) - len(added) or any(b not in files for b in known)
            self.entries = entries
            if removed or not (self.path / UIDLIST).exists():
                self._write_list()
            elif added:
                self._append_list(added)
            self._stamp = self._dir_stamp()
        return True

    # --- reading ------------------------------------------------------------------------

    def uids(self) -> list[int]:
        return sorted(self.entries)

    def file_of(self, uid: int) -> Path:
        e = self.entries[uid]
        return self.path / e.sub / e.filename

    def read(self, uid: int) -> bytes:
        """The message with CRLF line endings; MailstoreError if it was expunged meanwhile."""
        e = self.entries.get(uid)
        if e is None:
            raise MailstoreError(f"message {uid} no longer exists")
        try:
            # Plain strings, not pathlib: this is the hot path of FETCH and RETR.
            with open(f"{self._dir}/{e.sub}/{e.filename}", "rb") as fh:
                return crlf(fh.read())
        except FileNotFoundError:
            raise MailstoreError(f"message {uid} no longer exists") from None

    def internal_date(self, uid: int) -> float:
        try:
            return os.stat(self.file_of(uid)).st_mtime
        except (KeyError, FileNotFoundError):
            return time.time()

    def unseen_count(self) -> int:
        return sum(1 for e in self.entries.values() if "S" not in e.letters)

    def first_unseen(self) -> int | None:
        for i, uid in enumerate(self.uids(), 1):
            if "S" not in self.entries[uid].letters:
                return i
        return None

    # --- changing -------------------------------------------------------------------------

    def add(self, data: bytes, flags: Iterable[str] = (), date: float | None = None) -> int:
        """Store DATA durably in cur/ with FLAGS; return its UID (reserve, write, commit in one)."""
        uid = self.reserve()
        try:
            entry = self.write(uid, data, flags, date)
        except BaseException:
            self.abandon(uid)
            raise
        return self.commit(entry)

    # An APPEND in three steps, so the service can run the slow middle one (file I/O and
    # two fsyncs) in a worker thread: reserve() and commit() touch shared state and run in
    # the caller's thread, in UID order; write() touches only its own new file.

    def reserve(self) -> int:
        """The next UID, held for a write() in progress (sync() ignores its file until commit)."""
        with self._locked():
            self.sync()
            uid = self.next_uid
            self.next_uid += 1
            self.pending.add(uid)
            return uid

    def write(self, uid: int, data: bytes, flags: Iterable[str] = (), date: float | None = None) -> Entry:
        """Write DATA as UID's file: tmp/, fsync, rename into cur/, fsync cur/. Thread-safe.

        Two fsyncs, so an OK to the client means the message is on disk. The UID is
        part of the file name, so the list append in commit() needs no fsync.
        """
        canon = _canonical(flags)
        letters = "".join(sorted(FLAG_LETTERS[f] for f in canon if f in FLAG_LETTERS))
        keywords = {f for f in canon if not f.startswith("\\") and f not in FLAG_LETTERS}
        base = f"{_unique_name()},U={uid}"
        tmp = f"{self._dir}/tmp/{base}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if date is not None:
            os.utime(tmp, (date, date))
        os.rename(tmp, f"{self._dir}/cur/{base}:2,{letters}")
        _fsync_dir(self.path / "cur")
        return Entry(uid, base, "cur", letters, len(crlf(data)), keywords)

    def commit(self, e: Entry) -> int:
        """Make a written message visible; call in UID order."""
        with self._locked():
            self.pending.discard(e.uid)
            self.entries[e.uid] = e
            self._append_list([e], sync=bool(e.keywords))
            if e.keywords:
                self.define_keywords(e.keywords)
            self._stamp = self._dir_stamp()
        return e.uid

    def abandon(self, uid: int) -> None:
        """Give up a reserved UID whose write failed (the UID is never used: gaps are allowed)."""
        self.pending.discard(uid)

    def set_flags(self, uid: int, flags: Iterable[str]) -> list[str]:
        """Replace UID's flags (system flags and keywords); return the new flag list."""
        e = self.entries.get(uid)
        if e is None:
            raise MailstoreError(f"message {uid} no longer exists")
        wanted = _canonical(flags)
        letters = "".join(sorted(FLAG_LETTERS[f] for f in wanted if f in FLAG_LETTERS))
        keywords = {f for f in wanted if not f.startswith("\\") and f not in FLAG_LETTERS}
        with self._locked():
            if letters != e.letters or e.sub != "cur":
                old = self.path / e.sub / e.filename
                new = self.path / "cur" / f"{e.base}:2,{letters}"
                try:
                    os.rename(old, new)
                except FileNotFoundError:
                    raise MailstoreError(f"message {uid} no longer exists") from None
                e.sub, e.letters = "cur", letters
            if keywords != e.keywords:
                e.keywords = keywords
                self._write_list()
                self.define_keywords(keywords)
            self._stamp = self._dir_stamp()
        return e.flags()

    def expunge(self, uids: Iterable[int]) -> list[int]:
        """Remove UIDS; return the UIDs actually removed."""
        gone: list[int] = []
        with self._locked():
            for uid in sorted(set(uids)):
                e = self.entries.pop(uid, None)
                if e is None:
                    continue
                self.recent.discard(uid)
                try:
                    os.unlink(self.path / e.sub / e.filename)
                except FileNotFoundError:
                    pass
                gone.append(uid)
            if gone:
                self._write_list()
            self._stamp = self._dir_stamp()
        return gone

    def defined_keywords(self) -> set[str]:
        """Keywords of this folder: those in use plus those defined before (RFC 3501 7.2.6 FLAGS)."""
        try:
            defined = set((self.path / KEYWORDS_FILE).read_text().split())
        except FileNotFoundError:
            defined = set()
        return defined | {k for e in self.entries.values() for k in e.keywords}

    def define_keywords(self, keywords: Iterable[str]) -> None:
        defined = self.defined_keywords()
        new = set(keywords) - defined
        if new:
            p = self.path / KEYWORDS_FILE
            tmp = self.path / (KEYWORDS_FILE + ".tmp")
            tmp.write_text("".join(f"{k}\n" for k in sorted(defined | new)))
            os.replace(tmp, p)

    def claim_recent(self) -> set[int]:
        """The \\Recent UIDs for the session that claims them (RFC 3501 2.3.2); others see none."""
        got, self.recent = self.recent, set()
        return got


def _canonical(flags: Iterable[str]) -> list[str]:
    """Flags with system flags in their canonical case (flags are case-insensitive)."""
    canon = {f.lower(): f for f in (*SYSTEM_FLAGS, "\\Recent")}
    out = []
    for f in flags:
        c = canon.get(f.lower(), f)
        if c != "\\Recent" and c not in out:
            out.append(c)
    return out
