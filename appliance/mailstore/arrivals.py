"""How messages arrive in a mailbox: deliveries in new/, APPEND, COPY (``Mailbox`` delegates here).

The order of writes is what makes a crash at any point safe. A UID is committed to
the index *before* any file carries it in its name, so a UID the index handed out
is never handed out again (RFC 3501 §2.3.1.1). A file is fully written and fsynced
in ``tmp/`` (or is already in ``new/``) before its row is committed; only then is it
renamed into ``cur/``. Between the commit and the rename (or after a crash there),
the file is found at its old place by ``Mailbox._locate`` and moved on.

Costs: ``sync`` reads ``new/`` only (the relay's deliveries get UIDs in one
transaction and move to ``cur/`` as ``<stem>,U=<uid>:2,<letters>``); ``copy``
hard-links the files and fsyncs the destination once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from appliance.fsutil import fsync_dir
from appliance.mailstore import fill
from appliance.mailstore.errors import MailstoreError
from appliance.mailstore.index import adjust_counts, chunks
from appliance.mailstore.maildir import (
    FORWARDED,
    bits_of_letters,
    crlf_size,
    join_keywords,
    letters_of_bits,
    parse_flags,
    split_name,
    unique_name,
    vsize_in,
    without_uid,
)

if TYPE_CHECKING:
    from appliance.mailstore.mailbox import Mailbox


@contextlib.contextmanager
def disk_errors(name: str) -> Iterator[None]:
    """File system errors as store errors a client can be shown (no traceback, nothing half-written)."""
    try:
        yield
    except FileNotFoundError:
        raise  # the caller knows what was missing
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise MailstoreError("not enough disk space", code="OVERQUOTA") from exc  # as Dovecot answers
        raise MailstoreError(f"cannot write to mailbox {name}: {exc.strerror}", code="SERVERBUG") from exc


def sync(box: Mailbox) -> bool:
    """Index the files the relay put in new/ (new/ only is read); True if any were added."""
    try:
        names = [n for n in os.listdir(box._d + "/new") if not n.startswith(".")]
    except FileNotFoundError:
        raise MailstoreError(f"mailbox {box.name} no longer exists", code="NONEXISTENT") from None
    if not names:
        return False
    found: list[tuple[float, str, str, str, int]] = []
    for n in names:
        p = f"{box._d}/new/{n}"
        stem, info = split_name(n)
        stem = without_uid(stem)  # a UID from elsewhere means nothing here
        try:
            mtime = os.stat(p).st_mtime
            size = vsize_in(stem)
            if size is None:  # not from our relay: read it once, here
                with open(p, "rb") as fh:
                    size = crlf_size(fh.read())
        except FileNotFoundError:
            continue  # another session moved it meanwhile
        found.append((mtime, n, stem, info, size))
    found.sort()  # delivery order
    renames: list[tuple[str, str]] = []
    added = 0
    with box._ix.write() as db:
        uidnext, hms, _, _ = box._row(db)
        modseq = hms + 1
        rows = []
        for mtime, n, stem, info, size in found:
            done = db.execute("SELECT stem, flags FROM messages WHERE mailbox_id = ? AND stem >= ? AND stem < ?",
                              (box.id, stem + ",U=", stem + ",U>")).fetchone()
            if done is not None:  # indexed by a sync that did not get to rename it
                renames.append((n, f"{done[0]}:2,{letters_of_bits(done[1])}"))
                continue
            bits = bits_of_letters(info)
            new_stem = f"{stem},U={uidnext}"
            rows.append((box.id, uidnext, new_stem, bits, size, mtime, modseq))
            renames.append((n, f"{new_stem}:2,{letters_of_bits(bits)}"))
            uidnext += 1
        if rows:
            db.executemany("INSERT INTO messages(mailbox_id, uid, stem, flags, size, internaldate, modseq) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute("UPDATE mailboxes SET uidnext = ?, highestmodseq = ?, messages = messages + ?, "
                       "bytes = bytes + ? WHERE id = ?",
                       (uidnext, modseq, len(rows), sum(r[4] for r in rows), box.id))
            adjust_counts(db, box.id, [r[3] for r in rows], ())
            added = len(rows)
    for old, new in renames:
        with contextlib.suppress(FileNotFoundError):  # a concurrent sync renamed it first
            os.rename(f"{box._d}/new/{old}", f"{box._d}/cur/{new}")
    if renames:
        fsync_dir(box._d + "/cur")
    return added > 0


def commit_new(box: Mailbox, items: list[tuple[str, int, str, int, float]]) -> list[int]:
    """Give UIDs to files waiting in tmp/ (base, flags, keywords, size, date) and commit them."""
    with box._ix.write() as db:
        uidnext, hms, _, _ = box._row(db)
        modseq = hms + 1
        rows, uids, kws = [], [], set()
        for base, bits, kw, size, date in items:
            rows.append((box.id, uidnext, f"{base},U={uidnext}", bits, kw, size, date, modseq))
            uids.append(uidnext)
            kws.update(kw.split())
            if bits & FORWARDED:
                kws.add("$Forwarded")
            uidnext += 1
        db.executemany("INSERT INTO messages(mailbox_id, uid, stem, flags, keywords, size, internaldate, modseq) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.execute("UPDATE mailboxes SET uidnext = ?, highestmodseq = ?, messages = messages + ?, "
                   "bytes = bytes + ? WHERE id = ?", (uidnext, modseq, len(rows), sum(r[5] for r in rows), box.id))
        adjust_counts(db, box.id, [r[3] for r in rows], ())
        box._define(db, kws)
    for (base, bits, _, _, _), uid in zip(items, uids, strict=True):
        with contextlib.suppress(FileNotFoundError):  # a reader's _locate moved it already
            os.rename(f"{box._d}/tmp/{base}", f"{box._d}/cur/{base},U={uid}:2,{letters_of_bits(bits)}")
    fsync_dir(box._d + "/cur")
    return uids


def append(box: Mailbox, data: bytes, flags: Iterable[str] = (), internaldate: float | None = None) -> int:
    """Store DATA; its UID is returned only once the message is on disk (file and directory fsynced)."""
    try:
        bits, kws = parse_flags(flags)
    except ValueError as exc:
        raise MailstoreError(str(exc)) from None
    size = crlf_size(data)
    box._store.check_quota(size, 1)
    base = f"{unique_name()},W={size}"
    tmp = f"{box._d}/tmp/{base}"
    date = time.time() if internaldate is None else internaldate
    try:
        with disk_errors(box.name):
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileNotFoundError:
                raise MailstoreError(f"mailbox {box.name} no longer exists", code="NONEXISTENT") from None
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.utime(tmp, (date, date))  # the internal date also survives an index rebuild
        return commit_new(box, [(base, bits, join_keywords(kws), size, date)])[0]
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def copy(box: Mailbox, uids: Sequence[int], dest: Mailbox) -> list[tuple[int, int]]:
    """Hard-link UIDS into DEST (flags, keywords and internal date kept); (source, dest) UID pairs."""
    fill.complete(box, uids)  # sizes and dates must be known to be copied (a no-op once filled)
    with box._ix.read() as db:
        box._row(db)
        rows = []
        for part in chunks(sorted(set(uids))):
            marks = ",".join("?" * len(part))
            rows += db.execute(f"SELECT uid, stem, flags, keywords, size, internaldate FROM messages "
                               f"WHERE mailbox_id = ? AND uid IN ({marks}) ORDER BY uid",
                               (box.id, *part)).fetchall()
    if not rows:
        return []
    dest._store.check_quota(sum(r[4] for r in rows), len(rows))
    if not os.path.isdir(dest._d + "/tmp"):
        raise MailstoreError(f"mailbox {dest.name} does not exist", code="TRYCREATE")  # RFC 3501 §6.4.7
    items, src_uids = [], []
    try:
        for uid, stem, bits, kw, size, date in rows:
            src = box._locate(uid, stem, bits)
            if src is None:
                continue  # expunged meanwhile: COPY copies what still exists
            base = f"{unique_name()},W={size}"
            try:
                with disk_errors(dest.name):
                    os.link(src, f"{dest._d}/tmp/{base}")
            except FileNotFoundError:
                continue  # the source went meanwhile
            items.append((base, bits, kw, size, date))
            src_uids.append(uid)
        if not items:
            return []
        return list(zip(src_uids, commit_new(dest, items), strict=True))
    except BaseException:
        for base, *_ in items:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{dest._d}/tmp/{base}")
        raise
