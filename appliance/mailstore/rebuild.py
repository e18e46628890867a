"""Rebuilding the index from the Maildir: lost or corrupt index, boxes of the old store, repairs.

What is recovered, and from where:

* UIDs from the file names (``,U=<uid>``), from ``appliance-uidmap`` for the
  files whose names do not say it (uidmap.py), or from the old ``appliance-uidlist``;
* UIDVALIDITY and a UIDNEXT floor from ``appliance-uidvalidity`` (written at
  CREATE and whenever an expunge removes the highest UIDs), or from the old
  uidlist's header, so clients keep their caches;
* standard flags from the info letters, keywords from the old uidlist only
  (since then they live in the index alone: a lost index loses keywords);
* sizes from ``,W=`` (or the old uidlist), else by reading the file once, later (fill.py).

MODSEQs restart above any value issued before (RFC 7162 §3.1.1: strictly
increasing): the new HIGHESTMODSEQ is the time in microseconds. A store issues
at most one MODSEQ per committed transaction, and a durable commit takes far
more than a microsecond, so no mailbox can have issued that many since it was
created at MODSEQ 1, or since the last rebuild started at an earlier time.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.mailstore.fill import PENDING_NAMES, file_size, names_pending
from appliance.mailstore.index import adjust_counts
from appliance.mailstore.mailbox import VALIDITY_FILE, write_validity
from appliance.mailstore.maildir import (
    DELETED,
    SEEN,
    bits_of_letters,
    letters_of_bits,
    split_name,
    uid_in,
    vsize_in,
    without_uid,
)
from appliance.mailstore.uidmap import UID_MAP, read_uidmap, write_uidmap

if TYPE_CHECKING:
    import sqlite3

    from appliance.mailstore.mailbox import Mailbox

OLD_UIDLIST = "appliance-uidlist"  # the previous store's list (appliance/mailstore/folder.py)
OLD_KEYWORDS = "appliance-keywords"
_IMPORT_BATCH = 2000  # names staged per executemany (import_folder)


def rebuild_modseq() -> int:
    return int(time.time() * 1_000_000)


def new_uidvalidity(db: sqlite3.Connection, above: int = 0) -> int:
    """A UIDVALIDITY above every one this account used, and above ABOVE (RFC 3501 §2.3.1.1: a
    re-created name gets a greater one)."""
    row = db.execute("SELECT value FROM meta WHERE key = 'last_uidvalidity'").fetchone()
    v = max(int(time.time()), (int(row[0]) + 1) if row else 0, above + 1)
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('last_uidvalidity', ?)", (v,))
    return v


def read_validity(path: Path) -> tuple[int | None, int]:
    """(UIDVALIDITY or None, UIDNEXT floor) from the folder's small file."""
    try:
        text = (path / VALIDITY_FILE).read_text().split()
    except (FileNotFoundError, UnicodeDecodeError):
        return None, 1
    try:
        if len(text) == 1 and text[0].isdigit():  # the old store wrote the bare number
            return int(text[0]), 1
        fields = {t[:1]: int(t[1:]) for t in text}
        return fields.get("V"), fields.get("N", 1)
    except ValueError:
        return None, 1


def read_old_uidlist(path: Path) -> tuple[int, int, dict[str, tuple[int, int, list[str]]]] | None:
    """(uidvalidity, nextuid, {stem: (uid, size, keywords)}) from an old ``appliance-uidlist``."""
    try:
        lines = (path / OLD_UIDLIST).read_text().splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    header = lines[0].split() if lines else []
    if not (len(header) == 3 and header[0] == "A1" and header[1][:1] == "V" and header[2][:1] == "N"):
        return None
    try:
        v, n = int(header[1][1:]), int(header[2][1:])
    except ValueError:
        return None
    known: dict[str, tuple[int, int, list[str]]] = {}
    for line in lines[1:]:
        parts = line.split(" ")
        if len(parts) >= 3 and parts[0].isdigit() and parts[2].isdigit():
            known[parts[1]] = (int(parts[0]), int(parts[2]), parts[3:])
    return v, n, known


def _stage(db: sqlite3.Connection, batch: list[tuple[str, int, str, int, int | None, int | None]]) -> None:
    """Move BATCH (stem, flags, keywords, size, UID in the name, UID) into the import's temporary table."""
    if batch:
        db.executemany("INSERT INTO temp.import_files(stem, flags, keywords, size, named, uid) "
                       "VALUES (?, ?, ?, ?, ?, ?)", batch)
        batch.clear()


def _size(path: str, stem: str) -> int | None:
    size = vsize_in(stem)
    return size if size is not None else file_size(path)


def import_folder(db: sqlite3.Connection, name: str, path: Path, special_use: str | None) -> None:
    """Create NAME's row from the Maildir at PATH (files in cur/; new/ is left to ``sync``)."""
    old = read_old_uidlist(path)
    validity, floor = read_validity(path)
    listed: dict[str, tuple[int, int, list[str]]] = {}
    if old is not None:
        validity, floor, listed = old[0], max(floor, old[1]), old[2]
    fresh = validity is None
    if validity is None:
        validity = new_uidvalidity(db)
    mapped = read_uidmap(path, validity) if old is None else {}
    if names_pending(str(path)) and not fresh and not mapped:
        # A store before uidmap.py: the index was lost while some files carried their UID in the
        # index only (the fill had not renamed them yet). Those UIDs cannot be recovered, and a
        # change of UIDs MUST show as a new UIDVALIDITY (RFC 3501 §2.3.1.1).
        validity = new_uidvalidity(db, above=validity)
    cur = f"{path}/cur"
    # Only the listing: no stat, read or rename per file here. Internal dates, sizes missing from
    # the names and UIDs missing from the names are filled in later (fill.py), so the first open of
    # a large Maildir costs about what Dovecot's does. Rows with internaldate -1 are "unfilled".
    # The names go to a temporary table in batches and SQLite numbers them: holding 100,000 names
    # with their tuples and ints in Python at once (about 50 MB) left some 20 MB of the interpreter's
    # arenas pinned after each import (issue 13: the access service's RSS); now about 1 MB is live.
    # The staging table's page cache: 1 MiB, the rest spills to SQLite's temporary file. A larger
    # cache stayed allocated after the import (16 MiB kept 6.5 MB per imported account).
    db.execute("PRAGMA temp.cache_size=-1024")
    db.execute("CREATE TEMP TABLE import_files (seq INTEGER PRIMARY KEY, stem TEXT NOT NULL, "
               "flags INTEGER NOT NULL, keywords TEXT NOT NULL, size INTEGER NOT NULL, named INTEGER, uid INTEGER)")
    letters: dict[str, int] = {}  # info letters -> flag bits: a mailbox has a handful of combinations
    batch: list[tuple[str, int, str, int, int | None, int | None]] = []
    with os.scandir(cur) as names:
        for item in names:
            n = item.name
            if n.startswith("."):
                continue
            stem, _, info = n.partition(":2,")
            bits = letters.get(info)
            if bits is None:
                bits = letters[info] = bits_of_letters(info)
            entry = listed.get(stem) if listed else None
            # The substring tests first: most names carry neither, and the regular expressions cost more.
            named = uid_in(stem) if ",U=" in stem else None
            size = entry[1] if entry else (vsize_in(stem) if ",W=" in stem else None)
            uid = entry[0] if entry else (mapped.get(stem, named) if mapped else named)
            batch.append((stem, bits, " ".join(sorted(set(entry[2]))) if entry else "",
                          -1 if size is None else size, named, uid))
            if len(batch) >= _IMPORT_BATCH:
                _stage(db, batch)
    _stage(db, batch)
    # A UID claimed twice (two files, or a file and the old list) stays with the first file listed;
    # the others, and the files without one, are numbered from UIDNEXT in name order: Maildir names
    # start with the delivery time, so name order is delivery order (as Dovecot takes it).
    top, count, total, unseen, deleted, missing, claimed, odd = db.execute(
        f"SELECT max(uid), count(*), coalesce(sum(max(size, 0)), 0), coalesce(sum(flags & {SEEN} = 0), 0), "
        f"coalesce(sum(flags & {DELETED} != 0), 0), coalesce(sum(uid IS NULL), 0), count(DISTINCT uid), "
        f"coalesce(sum(uid IS NOT NULL AND (named IS NULL OR named != uid)), 0) FROM temp.import_files").fetchone()
    dupes = count - missing - claimed
    if dupes:
        db.execute("UPDATE temp.import_files SET uid = NULL WHERE seq IN (SELECT seq FROM (SELECT seq, row_number() "
                   "OVER (PARTITION BY uid ORDER BY seq) AS k FROM temp.import_files WHERE uid IS NOT NULL) "
                   "WHERE k > 1)")
    uidnext = max(floor, (top or 0) + 1)
    first_new = uidnext
    uidnext += missing + dupes
    unnamed = uidnext > first_new or odd > 0  # some file's name does not say its UID (uidmap.py)
    modseq = 1 if fresh and not count else rebuild_modseq()
    cursor = db.execute("INSERT INTO mailboxes(name, uidvalidity, uidnext, highestmodseq, special_use, "
                        "first_recent_uid, messages, bytes, unseen, deleted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (name, validity, uidnext, modseq, special_use, uidnext, count, total, unseen, deleted))
    mid = cursor.lastrowid
    # A large import touches five B-trees per row; the connections' small page cache (index.py)
    # would evict and re-read their pages all along. 16 MiB for this statement only.
    (cache,) = db.execute("PRAGMA cache_size").fetchone()
    db.execute("PRAGMA cache_size=-16384")
    db.execute("INSERT INTO messages(mailbox_id, uid, stem, flags, keywords, size, internaldate, modseq) "
               "SELECT ?, coalesce(uid, ? - 1 + row_number() OVER (PARTITION BY uid IS NULL ORDER BY stem, flags, size)), "
               "stem, flags, keywords, size, -1, ? FROM temp.import_files", (mid, first_new, modseq))
    db.execute(f"PRAGMA cache_size={int(cache)}")
    kws = {k for (text,) in db.execute("SELECT keywords FROM temp.import_files WHERE keywords != ''")
           for k in text.split()}
    db.execute("DROP TABLE temp.import_files")
    with contextlib.suppress(FileNotFoundError, UnicodeDecodeError):
        kws |= set((path / OLD_KEYWORDS).read_text().split())
    db.executemany("INSERT OR IGNORE INTO keywords(mailbox_id, keyword) VALUES (?, ?)", [(mid, k) for k in kws])
    # The order matters for a crash between these steps: the UIDVALIDITY first (a list written
    # under another one is ignored), then the list, then the old marker (still there, it makes
    # the next import take a new UIDVALIDITY, which is always safe).
    write_validity(path, validity, uidnext)
    if unnamed:
        # Durable before the commit: a lost index finds these UIDs again (uidmap.py), and no file
        # is renamed for them.
        write_uidmap(db, mid, path, validity)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path / UID_MAP)  # every name says its UID: an older list would only mislead
    if names_pending(str(path)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path / PENDING_NAMES)  # the list above (or the names) now holds every UID
    if old is not None:
        # Imported once: from now on the index is the truth (a later rebuild must not bring back
        # this list's stale keywords). The UIDs it gave stay recoverable through the new list.
        os.replace(path / OLD_UIDLIST, path / (OLD_UIDLIST + ".migrated"))


def rescan(box: Mailbox) -> None:
    """Make BOX's index rows agree with cur/: flags changed by other tools, files added or removed."""
    ix, mid, d = box._ix, box.id, box._d
    files: dict[str, str] = {}
    for n in os.listdir(f"{d}/cur"):
        if not n.startswith("."):
            files.setdefault(split_name(n)[0], n)
    renames: list[tuple[str, str]] = []
    unlinks: list[str] = []
    with ix.write() as db:
        uidnext, hms, _, _ = box._row(db)
        modseq = hms + 1
        rows = {r[0]: (r[1], r[2]) for r in db.execute(
            "SELECT stem, uid, flags FROM messages WHERE mailbox_id = ?", (mid,))}
        known_uids = {uid for uid, _ in rows.values()}
        # Rows whose file is not yet named with its UID (fill.py): a batch may have renamed the file
        # and lost its commit, so the file is "<stem>,U=<uid>" while the row still says "<stem>".
        unnamed = {uid: s for s, (uid, _) in rows.items() if uid_in(s) != uid}
        flag_updates, inserts, gone, stem_fixes = [], [], [], []
        before: list[int] = []
        after: list[int] = []
        for stem, n in files.items():
            bits = bits_of_letters(split_name(n)[1])
            if stem in rows:
                uid, old_bits = rows[stem]
                if bits != old_bits:
                    flag_updates.append((bits, modseq, mid, uid))
                    before.append(old_bits)
                    after.append(bits)
                continue
            uid = uid_in(stem)
            if uid is not None and unnamed.get(uid) == without_uid(stem):
                stem_fixes.append((stem, mid, uid))
                continue
            if uid is not None and db.execute("SELECT 1 FROM expunged WHERE mailbox_id = ? AND uid = ?",
                                              (mid, uid)).fetchone():
                unlinks.append(n)  # expunged, but the unlink after the commit did not happen
                continue
            size = _size(f"{d}/cur/{n}", stem)
            try:
                mtime = os.stat(f"{d}/cur/{n}").st_mtime
            except FileNotFoundError:
                continue
            if size is None:
                continue
            if uid is None or uid >= uidnext or uid in known_uids:
                uid = uidnext
                uidnext += 1
                new_stem = f"{without_uid(stem)},U={uid}"
                renames.append((n, f"{new_stem}:2,{letters_of_bits(bits)}"))
                stem = new_stem
            known_uids.add(uid)
            inserts.append((mid, uid, stem, bits, size, mtime, modseq))
        for stem, (uid, _) in rows.items():
            if stem not in files and box._locate(uid, stem, 0) is None:
                gone.append(uid)
        if stem_fixes:
            db.executemany("UPDATE messages SET stem = ? WHERE mailbox_id = ? AND uid = ?", stem_fixes)
        if flag_updates:
            db.executemany("UPDATE messages SET flags = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?", flag_updates)
        if inserts:
            db.executemany("INSERT INTO messages(mailbox_id, uid, stem, flags, size, internaldate, modseq) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", inserts)
        if gone:
            keys = [(mid, u) for u in gone]
            gone_rows = [db.execute("SELECT size, flags FROM messages WHERE mailbox_id = ? AND uid = ?", k).fetchone()
                         for k in keys]
            sizes = sum(max(r[0], 0) for r in gone_rows)  # -1: an unfilled size, never counted
            before.extend(r[1] for r in gone_rows)
            db.executemany("DELETE FROM messages WHERE mailbox_id = ? AND uid = ?", keys)
            db.executemany("DELETE FROM cache WHERE mailbox_id = ? AND uid = ?", keys)
            db.executemany("INSERT OR REPLACE INTO expunged(mailbox_id, uid, modseq) VALUES (?, ?, ?)",
                           [(mid, u, modseq) for u in gone])
            db.execute("UPDATE mailboxes SET messages = messages - ?, bytes = bytes - ? WHERE id = ?",
                       (len(gone), sizes, mid))
        after.extend(i[3] for i in inserts)
        adjust_counts(db, mid, after, before)
        if flag_updates or inserts or gone:
            db.execute("UPDATE mailboxes SET uidnext = ?, highestmodseq = ?, messages = messages + ?, "
                       "bytes = bytes + ? WHERE id = ?", (uidnext, modseq, len(inserts),
                                                          sum(i[4] for i in inserts), mid))
    for old_name, new_name in renames:
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{d}/cur/{old_name}", f"{d}/cur/{new_name}")
    for n in unlinks:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{d}/cur/{n}")
