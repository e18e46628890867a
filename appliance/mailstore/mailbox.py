"""One mailbox: a Maildir directory and its rows in the account's index.

Every operation costs in proportion to what it touches (issue 13):

* ``store()`` of k messages is k indexed updates in one transaction, plus a
  rename for each message whose standard flags change (so other Maildir tools
  see them); keyword-only changes touch the index only;
* ``expunge()``/``move_to()`` are k deletions from a B-tree, O(k log n);
* ``state()`` is O(changes) once this process has read the mailbox;
* how messages arrive (``sync()`` of ``new/``, ``append()``, ``copy_to()``) and the
  order of writes that makes a crash safe are in ``arrivals.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from array import array
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from appliance.fsutil import atomic_write
from appliance.mailstore import arrivals, fill
from appliance.mailstore.errors import MailstoreError
from appliance.mailstore.index import adjust_counts, chunks
from appliance.mailstore.maildir import (
    FORWARDED,
    SEEN,
    crlf,
    flag_tuple,
    join_keywords,
    letters_of_bits,
    parse_flags,
)

if TYPE_CHECKING:
    import sqlite3

    from appliance.mailstore.account import MailStore

log = logging.getLogger("appliance.mailstore")
VALIDITY_FILE = "appliance-uidvalidity"  # "V<uidvalidity> N<uidnext floor>": survives a lost index


class Record(NamedTuple):
    uid: int
    flags: tuple[str, ...]
    size: int  # octets with CRLF line endings
    internaldate: float
    modseq: int


class MailboxState(NamedTuple):
    uidnext: int
    highestmodseq: int
    exists: int
    uids: array  # array('L'), ascending


class StoreResult(NamedTuple):
    changed: list[Record]  # messages whose flags changed, with their new MODSEQ
    failed: list[int]  # UNCHANGEDSINCE failures (RFC 7162 §3.1.3 MODIFIED)


_COLS = "uid, flags, keywords, size, internaldate, modseq"


def _record(row: tuple[int, int, str, int, float, int]) -> Record:
    return Record(row[0], flag_tuple(row[1], row[2]), row[3], row[4], row[5])


def write_validity(path: Path, uidvalidity: int, uidnext: int) -> None:
    atomic_write(path / VALIDITY_FILE, f"V{uidvalidity} N{uidnext}\n", mode=0o600)


class Mailbox:
    """A selected or examined mailbox. Thread-safe: all state is in the index and the files."""

    def __init__(self, store: MailStore, mailbox_id: int, name: str, uidvalidity: int, path: Path) -> None:
        self._store = store
        self._ix = store.index
        self.id = mailbox_id
        self.name = name
        self.uidvalidity = uidvalidity
        self._uids: tuple[int, int, array] | None = None  # (HIGHESTMODSEQ, UIDNEXT, UIDs) of the last state()
        self.unfilled = True  # until fill.complete finds no row a fast import left unfilled
        self._set_path(path)

    def _set_path(self, path: Path) -> None:
        self.dir = path
        self._d = str(path)
        self.watch_dirs = [path / "new", path / "cur"]

    def _row(self, db: sqlite3.Connection) -> tuple[int, int, int, int]:
        """(uidnext, highestmodseq, messages, first_recent_uid), or NONEXISTENT if deleted meanwhile."""
        row = db.execute("SELECT uidnext, highestmodseq, messages, first_recent_uid FROM mailboxes WHERE id = ?",
                         (self.id,)).fetchone()
        if row is None:
            raise MailstoreError(f"mailbox {self.name} no longer exists", code="NONEXISTENT")
        return row

    # --- picking up deliveries ---------------------------------------------------------

    def sync(self) -> bool:
        """Index the files the relay put in new/ (new/ only is read); True if any were added."""
        return arrivals.sync(self)

    def rescan(self) -> None:
        """Re-read cur/ and new/ entirely and make the index agree (external Maildir tools, repairs)."""
        from appliance.mailstore.rebuild import rescan

        rescan(self)
        self.sync()

    # --- reading -----------------------------------------------------------------------

    def state(self, shared: bool = False) -> MailboxState:
        """UIDNEXT, HIGHESTMODSEQ and every UID. O(changes) when this process asked before (warm SELECT).

        SHARED: ``uids`` is this process's cached snapshot itself (an ``array('I')``, never changed
        once made), not a copy: sessions with one mailbox selected share it until one of them
        needs its own (copy on write), so memory does not grow with sessions x messages.
        """
        with self._ix.read() as db:
            uidnext, hms, count, _ = self._row(db)
            cached = self._uids
            if cached is not None and cached[0] == hms and cached[1] == uidnext:
                uids = cached[2]
            elif cached is not None and cached[0] < hms:
                # Every removal is in `expunged` with its MODSEQ, and UIDs only grow: apply the difference.
                gone = {r[0] for r in db.execute("SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ?",
                                                 (self.id, cached[0]))}
                uids = array("I", [u for u in cached[2] if u not in gone]) if gone else array("I", cached[2])
                uids.extend(chain.from_iterable(db.execute(
                    "SELECT uid FROM messages WHERE mailbox_id = ? AND uid >= ? ORDER BY uid", (self.id, cached[1]))))
            else:
                uids = None
            if uids is None or len(uids) != count:  # cold, or a repair changed the past: read them all
                uids = array("I", chain.from_iterable(
                    db.execute("SELECT uid FROM messages WHERE mailbox_id = ? ORDER BY uid", (self.id,))))
        self._uids = (hms, uidnext, uids)  # 4 bytes a UID (RFC 9051 §2.3.1.1: 32-bit)
        return MailboxState(uidnext, hms, count, uids if shared else array("L", uids))

    def _filled(self, out: list[Record], again: Callable[[], list[Record]]) -> list[Record]:
        """OUT, or AGAIN() once the rows a fast import left unfilled are complete (fill.py): never a -1."""
        pending = [r.uid for r in out if r.internaldate < 0]
        if not pending:
            return out
        fill.complete(self, pending)
        return again()

    def records(self, uids: Sequence[int], complete: bool = True) -> list[Record]:
        """The records of UIDS, ascending. COMPLETE=False: size and internaldate may be -1 (unfilled,
        fill.py) for a caller that reads only UIDs, flags and MODSEQs."""
        out = self._records(uids)
        return self._filled(out, lambda: self._records(uids)) if complete else out

    def _records(self, uids: Sequence[int]) -> list[Record]:
        wanted = sorted(set(uids))
        out: list[Record] = []
        with self._ix.read() as db:
            self._row(db)
            for part in chunks(wanted):
                marks = ",".join("?" * len(part))
                out.extend(map(_record, db.execute(
                    f"SELECT {_COLS} FROM messages WHERE mailbox_id = ? AND uid IN ({marks})", (self.id, *part))))
        out.sort()
        return out

    def records_range(self, ranges: list[tuple[int, int]], complete: bool = True) -> list[Record]:
        """The records in the UID RANGES, ascending; COMPLETE as for ``records``."""
        out = self._records_range(ranges)
        return self._filled(out, lambda: self._records_range(ranges)) if complete else out

    def _records_range(self, ranges: list[tuple[int, int]]) -> list[Record]:
        out: list[Record] = []
        with self._ix.read() as db:
            self._row(db)
            for lo, hi in sorted(ranges):
                out.extend(map(_record, db.execute(
                    f"SELECT {_COLS} FROM messages WHERE mailbox_id = ? AND uid BETWEEN ? AND ? ORDER BY uid",
                    (self.id, lo, hi))))
        return out

    def changes_since(self, modseq: int) -> tuple[list[Record], list[int]]:
        """Records changed (or added) after MODSEQ, and UIDs expunged after it (RFC 7162 §3.2.5.2 VANISHED)."""
        changed, gone = self._changes_since(modseq)
        if any(r.internaldate < 0 for r in changed):
            fill.complete(self, [r.uid for r in changed if r.internaldate < 0])
            changed, gone = self._changes_since(modseq)
        return changed, gone

    def _changes_since(self, modseq: int) -> tuple[list[Record], list[int]]:
        with self._ix.read() as db:
            self._row(db)
            changed = [_record(r) for r in db.execute(
                f"SELECT {_COLS} FROM messages WHERE mailbox_id = ? AND modseq > ?", (self.id, modseq))]
            gone = [r[0] for r in db.execute(
                "SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ? ORDER BY uid", (self.id, modseq))]
        changed.sort()
        return changed, gone

    def unseen_first(self) -> int | None:
        with self._ix.read() as db:
            self._row(db)
            return db.execute("SELECT min(uid) FROM messages WHERE mailbox_id = ? AND flags & 1 = 0",
                              (self.id,)).fetchone()[0]

    def keywords(self) -> list[str]:
        with self._ix.read() as db:
            return [r[0] for r in db.execute("SELECT keyword FROM keywords WHERE mailbox_id = ? ORDER BY keyword",
                                             (self.id,))]

    def _entry(self, uid: int) -> tuple[str, int, int]:
        with self._ix.read() as db:
            row = db.execute("SELECT stem, flags, size FROM messages WHERE mailbox_id = ? AND uid = ?",
                             (self.id, uid)).fetchone()
        if row is None:
            raise MailstoreError(f"message {uid} no longer exists", code="EXPUNGEISSUED")
        return row

    def _locate(self, uid: int, stem: str, bits: int) -> str | None:
        """The file of a message: where the index says, or where a crash or another tool left it."""
        here = f"{self._d}/cur/{stem}:2,{letters_of_bits(bits)}"
        if os.path.exists(here):
            return here
        base = stem.removesuffix(f",U={uid}")
        for sub in ("tmp", "new"):  # committed, not yet renamed (see the module docstring)
            p = f"{self._d}/{sub}/{base}"
            if os.path.exists(p):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(p, here)
                    return here
        # Flags changed by another Maildir tool, or a concurrent STORE renamed it: one listing. A fill
        # batch that renamed the file and then lost its commit left it named with its UID (fill.py).
        prefix, named = stem + ":2,", f"{base},U={uid}:2,"
        for n in os.listdir(self._d + "/cur"):
            if n.startswith(prefix) or n == stem or n.startswith(named):
                return f"{self._d}/cur/{n}"
        return None

    def path(self, uid: int) -> Path:
        stem, bits, _ = self._entry(uid)
        p = self._locate(uid, stem, bits)
        if p is None:
            raise MailstoreError(f"message {uid} no longer exists", code="EXPUNGEISSUED")
        return Path(p)

    def size_of(self, uid: int) -> int:
        size = self._entry(uid)[2]
        if size < 0:
            fill.complete(self, [uid])
            size = self._entry(uid)[2]
        return size

    def read(self, uid: int) -> bytes:
        """The message with CRLF line endings; MailstoreError(EXPUNGEISSUED) if it is gone."""
        for _ in range(3):  # a concurrent STORE may rename the file between our lookup and open
            stem, bits, _ = self._entry(uid)
            p = self._locate(uid, stem, bits)
            if p is None:
                continue
            try:
                with open(p, "rb") as fh:
                    return crlf(fh.read())
            except FileNotFoundError:
                continue
        raise MailstoreError(f"message {uid} no longer exists", code="EXPUNGEISSUED")

    # --- changing flags ----------------------------------------------------------------

    def store(self, uids: Sequence[int], action: Literal["set", "add", "remove"], flags: Iterable[str],
              unchangedsince: int | None = None) -> StoreResult:
        """Change flags of UIDS in one transaction; O(k). Unknown UIDs are ignored (RFC 3501 §6.4.8)."""
        try:
            bits, kws = parse_flags(flags)
        except ValueError as exc:
            raise MailstoreError(str(exc)) from None
        if action not in ("set", "add", "remove"):
            raise ValueError(action)
        wanted = sorted(set(uids))
        fill.complete(self, wanted)  # the changed records carry sizes and dates (a no-op once filled)
        changed: list[Record] = []
        failed: list[int] = []
        with self._ix.write() as db:
            _, hms, _, _ = self._row(db)
            modseq = hms + 1
            updates = []
            renames = []
            before: list[int] = []
            after: list[int] = []
            used_kws: set[str] = set()
            for part in chunks(wanted):
                marks = ",".join("?" * len(part))
                for uid, old_bits, old_kw, size, idate, old_mod, stem in db.execute(
                        f"SELECT {_COLS}, stem FROM messages WHERE mailbox_id = ? AND uid IN ({marks})",
                        (self.id, *part)).fetchall():
                    # RFC 7162 §3.1.3: a message modified since UNCHANGEDSINCE is not changed.
                    if unchangedsince is not None and old_mod > unchangedsince:
                        failed.append(uid)
                        continue
                    have = frozenset(old_kw.split())
                    if action == "set":
                        nb, nk = bits, kws
                    elif action == "add":
                        nb, nk = old_bits | bits, have | kws
                    else:
                        nb, nk = old_bits & ~bits, have - kws
                    nk_s = join_keywords(nk)
                    if nb == old_bits and nk_s == old_kw:
                        continue
                    used_kws |= nk - have
                    if nb & FORWARDED and not old_bits & FORWARDED:
                        used_kws.add("$Forwarded")
                    updates.append((nb, nk_s, modseq, self.id, uid))
                    if nb != old_bits:
                        renames.append((uid, stem, old_bits, nb))
                        before.append(old_bits)
                        after.append(nb)
                    changed.append(Record(uid, flag_tuple(nb, nk_s), size, idate, modseq))
            if updates:
                db.executemany("UPDATE messages SET flags = ?, keywords = ?, modseq = ? "
                               "WHERE mailbox_id = ? AND uid = ?", updates)
                db.execute("UPDATE mailboxes SET highestmodseq = ? WHERE id = ?", (modseq, self.id))
                adjust_counts(db, self.id, after, before)
                self._define(db, used_kws)
            # Under the index's write lock, so two sessions never race on one file name.
            for uid, stem, old_bits, nb in renames:
                self._rename_flags(uid, stem, old_bits, nb)
        changed.sort()
        return StoreResult(changed, sorted(failed))

    def _rename_flags(self, uid: int, stem: str, old_bits: int, new_bits: int) -> None:
        new = f"{self._d}/cur/{stem}:2,{letters_of_bits(new_bits)}"
        try:
            os.rename(f"{self._d}/cur/{stem}:2,{letters_of_bits(old_bits)}", new)
        except FileNotFoundError:
            old = self._locate(uid, stem, old_bits)
            if old is not None and old != new:
                with contextlib.suppress(FileNotFoundError):
                    os.rename(old, new)

    def _define(self, db: sqlite3.Connection, kws: Iterable[str]) -> None:
        """Remember keywords for FLAGS (RFC 3501 §7.2.6); kept after their last use, as Dovecot does."""
        db.executemany("INSERT OR IGNORE INTO keywords(mailbox_id, keyword) VALUES (?, ?)",
                       [(self.id, k) for k in kws])

    def claim_recent(self) -> list[int]:
        """UIDs new since the last claim; RFC 3501 §2.3.2: only one session sees a message as \\Recent."""
        with self._ix.write() as db:
            uidnext, _, _, first = self._row(db)
            if first >= uidnext:
                return []
            db.execute("UPDATE mailboxes SET first_recent_uid = ? WHERE id = ?", (uidnext, self.id))
            return [r[0] for r in db.execute(
                "SELECT uid FROM messages WHERE mailbox_id = ? AND uid >= ? ORDER BY uid", (self.id, first))]

    # --- adding ------------------------------------------------------------------------

    def append(self, data: bytes, flags: Iterable[str] = (), internaldate: float | None = None) -> int:
        """Store DATA; its UID is returned only once the message is on disk (file and directory fsynced)."""
        return arrivals.append(self, data, flags, internaldate)

    def copy_to(self, uids: Sequence[int], dest: Mailbox) -> list[tuple[int, int]]:
        """Hard-link UIDS into DEST (flags, keywords and internal date kept); (source, dest) UID pairs."""
        return arrivals.copy(self, uids, dest)

    def move_to(self, uids: Sequence[int], dest: Mailbox) -> list[tuple[int, int]]:
        """RFC 6851 MOVE: copy, then expunge the originals."""
        pairs = self.copy_to(uids, dest)
        self.expunge([s for s, _ in pairs])
        return pairs

    # --- removing ----------------------------------------------------------------------

    def expunge(self, uids: Sequence[int] | None = None) -> list[int]:
        """Remove UIDS (None: every \\Deleted message); the expunged UIDs, ascending."""
        with self._ix.write() as db:
            uidnext, hms, _, _ = self._row(db)
            if uids is None:
                rows = db.execute("SELECT uid, stem, flags, size FROM messages "
                                  "WHERE mailbox_id = ? AND flags & 8 != 0 ORDER BY uid", (self.id,)).fetchall()
            else:
                rows = []
                for part in chunks(sorted(set(uids))):
                    marks = ",".join("?" * len(part))
                    rows += db.execute(f"SELECT uid, stem, flags, size FROM messages "
                                       f"WHERE mailbox_id = ? AND uid IN ({marks})", (self.id, *part)).fetchall()
                rows.sort()
            if not rows:
                return []
            modseq = hms + 1
            keys = [(self.id, r[0]) for r in rows]
            db.executemany("DELETE FROM messages WHERE mailbox_id = ? AND uid = ?", keys)
            db.executemany("DELETE FROM cache WHERE mailbox_id = ? AND uid = ?", keys)
            db.executemany("INSERT OR REPLACE INTO expunged(mailbox_id, uid, modseq) VALUES (?, ?, ?)",
                           [(self.id, r[0], modseq) for r in rows])
            db.execute("UPDATE mailboxes SET highestmodseq = ?, messages = messages - ?, bytes = bytes - ? "
                       "WHERE id = ?", (modseq, len(rows), sum(max(r[3], 0) for r in rows), self.id))
            adjust_counts(db, self.id, (), [r[2] for r in rows])
            top = db.execute("SELECT max(uid) FROM messages WHERE mailbox_id = ?", (self.id,)).fetchone()[0] or 0
        if rows[-1][0] > top:
            # The highest UIDs leave no file behind to recover UIDNEXT from: record it, so a
            # rebuilt index never gives them out again (RFC 3501 §2.3.1.1).
            try:
                write_validity(self.dir, self.uidvalidity, uidnext)
            except OSError as exc:  # the expunge stands; only a later index rebuild would miss the floor
                log.warning("%s: could not record UIDNEXT %d: %s", self.dir, uidnext, exc)
        for uid, stem, bits, _ in rows:
            p = self._locate(uid, stem, bits)
            if p is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
        return [r[0] for r in rows]

    # --- the cache of parsed structure -------------------------------------------------

    def cache_get(self, uid: int, key: str) -> bytes | None:
        with self._ix.read() as db:
            row = db.execute("SELECT value FROM cache WHERE mailbox_id = ? AND uid = ? AND key = ?",
                             (self.id, uid, key)).fetchone()
        return None if row is None else bytes(row[0])

    def cache_get_many(self, uids: Sequence[int], key: str) -> dict[int, bytes]:
        """The cached KEY values of UIDS that have one, in one read transaction (a FETCH batch)."""
        found: dict[int, bytes] = {}
        with self._ix.read() as db:
            for part in chunks(list(uids)):
                marks = ",".join("?" * len(part))
                found.update((uid, bytes(value)) for uid, value in db.execute(
                    f"SELECT uid, value FROM cache WHERE mailbox_id = ? AND key = ? AND uid IN ({marks})",
                    (self.id, key, *part)))
        return found

    def cache_put(self, uid: int, key: str, value: bytes) -> None:
        self.cache_put_many([(uid, key, value)])

    def cache_put_many(self, entries: Iterable[tuple[int, str, bytes]]) -> None:
        """(uid, key, value) rows in one transaction: one WAL commit (and fsync) for a FETCH batch,
        not one per message (the first ENVELOPE page, issue 13)."""
        rows = [(self.id, uid, key, value, self.id, uid) for uid, key, value in entries]
        if not rows:
            return
        with self._ix.write(durable=False) as db:  # derived rows: rebuilt if a power loss drops them
            # Only for a message that still exists: an expunge deletes its cache rows.
            db.executemany("INSERT OR REPLACE INTO cache(mailbox_id, uid, key, value) "
                           "SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM messages WHERE mailbox_id = ? AND uid = ?)",
                           rows)

    def unseen_count(self) -> int:
        with self._ix.read() as db:
            self._row(db)
            return db.execute("SELECT unseen FROM mailboxes WHERE id = ?", (self.id,)).fetchone()[0]

    def uids_with(self, present: Iterable[str] = (), absent: Iterable[str] = (), upto: int | None = None) -> array:
        """UIDs (ascending, at most UPTO) having every system flag in PRESENT and none in ABSENT,
        filtered in SQLite: the fast path for SEARCH UNSEEN / DELETED / FLAGGED... over a large mailbox."""
        where, args = self._flag_filter(present, absent, upto)
        with self._ix.read() as db:
            self._row(db)
            return array("L", chain.from_iterable(db.execute(
                f"SELECT uid FROM messages WHERE {where} ORDER BY uid", args)))

    def uid_text_with(self, present: Iterable[str] = (), absent: Iterable[str] = (),
                      upto: int | None = None) -> bytes:
        """The UIDs of ``uids_with`` as ASCII decimals joined by spaces (b"" for none), made inside SQLite.

        Why: UID SEARCH UNSEEN over 100,000 messages answers some 66,000 UIDs. Fetched row by row
        that is a Python tuple and int per UID, and the GIL taken back 66,000 times from whatever
        else runs (the background fill, fill.py); group_concat is one call that runs without it,
        about a third of the CPU (issue 13). The subquery's ORDER BY keeps the order (SQLite does
        not flatten an ordered subquery into an aggregate), and both indexes it may use are in UID order.
        """
        where, args = self._flag_filter(present, absent, upto)
        with self._ix.read() as db:
            self._row(db)
            text = db.execute(f"SELECT group_concat(uid, ' ') FROM "
                              f"(SELECT uid FROM messages WHERE {where} ORDER BY uid)", args).fetchone()[0]
        return text.encode("ascii") if text else b""

    def _flag_filter(self, present: Iterable[str], absent: Iterable[str],
                     upto: int | None) -> tuple[str, tuple[int, ...]]:
        try:
            want, kw1 = parse_flags(present)
            avoid, kw2 = parse_flags(absent)
        except ValueError as exc:
            raise MailstoreError(str(exc)) from None
        if kw1 or kw2:
            raise ValueError("uids_with takes system flags only")
        where = "mailbox_id = ? AND flags & ? = ? AND flags & ? = 0"
        if avoid & SEEN:
            where += " AND flags & 1 = 0"  # literally the partial index's condition (index.py): SQLite then uses it
        if upto is not None:
            where += " AND uid <= ?"
        return where, (self.id, want, want, avoid) + (() if upto is None else (upto,))
