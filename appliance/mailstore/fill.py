"""Completing what a fast import left for later: internal dates, sizes and UIDs in file names.

Why. The first open of a large Maildir that came from elsewhere (100,000 files
without ``,W=`` or ``,U=`` in their names) used to stat, read and rename every
file before the first LOGIN could answer: 4.8 s here, against 0.4 s for
Dovecot, which defers the same work (it stats lazily and computes virtual
sizes on demand). ``rebuild.import_folder`` now only lists ``cur/`` and
commits UIDs, flags and any size the name carries; every such row is
*unfilled*: ``internaldate = -1``, and ``size = -1`` when the name had no
``,W=``. Unfilled rows are completed

* in the background, one short write transaction per ``FILL_BATCH`` rows, by
  the process's one fill thread, to which ``MailStore.open`` hands the store
  (sessions' writes interleave between batches);
* on demand, for the rows a caller is about to see (``Mailbox.records`` and
  friends call ``complete`` first), so no caller ever sees -1.

The mailbox's ``bytes`` counter (quota, STATUS SIZE) grows as sizes become
known: until the fill ends, it undercounts the unfilled messages.

Names. No file is renamed here: the UIDs of files whose names do not carry
them are in ``appliance-uidmap``, written once by the import (uidmap.py). An
earlier version renamed each such file in its batch (``,U=<uid>``) and kept the
marker ``PENDING_NAMES`` while some were left; that rename was 44 % of the
first FETCH RFC822.SIZE of a 100,000-file import. A folder still marked by that
version gets its list written from the index when its fill ends (``_done``),
and until then a lost index takes a new UIDVALIDITY (rebuild.py). A file such
a batch renamed and whose commit was lost carries the UID the index lists under
the old name, which ``Mailbox._locate`` and ``rebuild.rescan`` accept.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.mailstore.errors import MailstoreError
from appliance.mailstore.maildir import crlf_size, letters_of_bits
from appliance.mailstore.uidmap import write_uidmap

if TYPE_CHECKING:
    from appliance.mailstore.account import MailStore
    from appliance.mailstore.mailbox import Mailbox

log = logging.getLogger("appliance.mailstore.fill")
FILL_BATCH = 1000  # rows per background transaction: about 30 ms of file work, so sessions barely wait
BATCH_PAUSE = 0.01  # seconds between background batches
PENDING_NAMES = "appliance-unnamed"  # present while some file's UID is in the index only
_CHUNK = 500


def file_size(path: str) -> int | None:
    """The CRLF size of the file at PATH, read once; None if it is gone."""
    # os.open/os.read, not open(): this runs for every file without a size in its name, and
    # the buffered-file object costs more than the read.
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return crlf_size(b"".join(chunks))


def names_pending(folder: str) -> bool:
    return os.path.exists(f"{folder}/{PENDING_NAMES}")


def _unfilled(db: sqlite3.Connection, mid: int, uids: Sequence[int] | None, limit: int) -> list[tuple]:
    if uids is None:
        return db.execute("SELECT uid, stem, flags, size FROM messages WHERE mailbox_id = ? AND internaldate < 0 "
                          "ORDER BY uid LIMIT ?", (mid, limit)).fetchall()
    wanted = sorted(set(uids))
    rows: list[tuple] = []
    for i in range(0, len(wanted), _CHUNK):
        part = wanted[i:i + _CHUNK]
        rows += db.execute(f"SELECT uid, stem, flags, size FROM messages WHERE mailbox_id = ? "
                           f"AND internaldate < 0 AND uid IN ({','.join('?' * len(part))})", (mid, *part)).fetchall()
    return rows


def complete(box: Mailbox, uids: Sequence[int] | None = None, limit: int = FILL_BATCH) -> bool:
    """Fill BOX's unfilled rows among UIDS (None: the next LIMIT of them); True if any remain unfilled.

    Free once the mailbox is filled (``box.unfilled`` is then False), and a read transaction
    only when none of UIDS is unfilled, so callers may call it before any operation.
    """
    if not box.unfilled:
        return False
    mid, d = box.id, box._d
    with box._ix.read() as db:
        found = _unfilled(db, mid, uids, 1 if uids is None else limit)
    if not found:
        if uids is None:
            _done(box)
        return uids is not None
    with box._ix.write() as db:
        rows = _unfilled(db, mid, uids, limit)  # again under the lock: another thread may have filled them
        updates: list[tuple[int, float, int, int]] = []
        added = 0
        for uid, stem, bits, size in rows:
            unknown = size < 0  # not yet in the bytes counter (a ,W= size was counted at import)
            path: str | None = f"{d}/cur/{stem}:2,{letters_of_bits(bits)}"
            try:
                st = os.stat(path)  # where the import found it, nearly always
            except FileNotFoundError:
                path = box._locate(uid, stem, bits)
                st = None
            mtime = None
            if path is not None:
                try:
                    mtime = (st or os.stat(path)).st_mtime
                    if size < 0:
                        got = file_size(path)
                        size = -1 if got is None else got
                except FileNotFoundError:
                    mtime = None
            if mtime is None or size < 0:
                # Gone: another Maildir tool removed it. Zeroes end its unfilled state; the next
                # rescan of cur/ removes the row (and a FETCH meanwhile gets EXPUNGEISSUED).
                updates.append((max(size, 0), 0.0, mid, uid))
                continue
            if unknown:
                added += size
            updates.append((size, mtime, mid, uid))
        if updates:
            db.executemany("UPDATE messages SET size = ?, internaldate = ? WHERE mailbox_id = ? AND uid = ?",
                           updates)
        if added:
            db.execute("UPDATE mailboxes SET bytes = bytes + ? WHERE id = ?", (added, mid))
        more = db.execute("SELECT 1 FROM messages WHERE mailbox_id = ? AND internaldate < 0 LIMIT 1",
                          (mid,)).fetchone() is not None
    if not more:
        _done(box)
    return more


def _done(box: Mailbox) -> None:
    box.unfilled = False
    if names_pending(box._d):
        # Marked by the version that renamed files (module docstring): their UIDs go into the
        # list now, before the marker goes, so a lost index still finds them.
        with box._ix.write() as db:
            write_uidmap(db, box.id, Path(box._d), box.uidvalidity)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{box._d}/{PENDING_NAMES}")


_queue: queue.SimpleQueue[tuple[MailStore, list[str], threading.Event]] = queue.SimpleQueue()
_worker: threading.Thread | None = None
_worker_lock = threading.Lock()


def fill_in_background(store: MailStore) -> threading.Event | None:
    """Queue STORE's unfilled mailboxes for the process's one fill thread; an Event set when done.

    One thread for every store: twenty accounts imported at once are filled one after the other,
    not by twenty threads competing for the disk and the index locks. None: nothing to fill.
    """
    global _worker
    with store.index.read() as db:
        names = [r[0] for r in db.execute("SELECT name FROM mailboxes WHERE id IN "
                                          "(SELECT DISTINCT mailbox_id FROM messages WHERE internaldate < 0)")]
    if not names:
        return None
    done = threading.Event()
    _queue.put((store, names, done))
    with _worker_lock:
        if _worker is None or not _worker.is_alive():
            _worker = threading.Thread(target=_work, name="mailstore-fill", daemon=True)
            _worker.start()
    return done


def _work() -> None:
    global _worker
    while True:
        try:
            store, names, done = _queue.get(timeout=30)
        except queue.Empty:
            with _worker_lock:  # exit when idle; the next fill_in_background starts another
                if _queue.empty():
                    _worker = None
                    return
            continue
        try:
            _fill_all(store, names)
        finally:
            done.set()
        if _queue.empty():
            _release_free_heap()


def _fill_all(store: MailStore, names: list[str]) -> None:
    for name in names:
        if store.closed:
            return
        try:
            box = store.mailbox(name)
            while not store.closed and complete(box):
                # A pause between batches: a session's write waiting on the index's writer lock
                # gets it now, and the reactor the GIL (threading.Lock is not fair on its own).
                time.sleep(BATCH_PAUSE)
        except (MailstoreError, sqlite3.Error, OSError) as exc:
            # What is left is filled on demand; the next open queues it again.
            log.warning("%s: filling %s stopped: %s", store.root, name, exc)


def _release_free_heap() -> None:
    """Give the C heap the import and the fill freed back to the OS (glibc keeps it otherwise).

    An import of 100,000 names peaks at about 50 MB of short-lived objects; without this,
    a process that imported 20 such mailboxes kept about 4 MB of freed heap per mailbox.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
