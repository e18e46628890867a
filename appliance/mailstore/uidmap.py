"""The UIDs of files whose names do not carry them: one list per folder, written once per import.

Why. A Maildir that came from elsewhere (a migration, a restored backup, another
server's store) has 100,000 files named without ``,U=<uid>``. The index gives
them UIDs at once; if the index is later lost, those UIDs must be found again,
or the rebuild has to take a new UIDVALIDITY and every client drops its cache
(RFC 3501 §2.3.1.1). The previous design renamed each such file to carry its
UID: 100,000 ``rename()`` calls, 44 % of the first FETCH RFC822.SIZE of such a
mailbox in the profile of issue 13 (14.8 s against Dovecot's 4.2 s). Dovecot
never renames for UIDs: it keeps them in ``dovecot-uidlist``. This is the same
idea, kept to what is needed: the list holds only the files whose name does
not say their UID, and it is written once, durably, before the import commits
(one sequential write and an fsync: about 6 MB for 100,000 names).

The list never needs an update afterwards. A name's stem (the part before
``:2,``) never changes here: a flag change renames only the info part, an
expunge removes the file (its line then matches nothing; the UIDNEXT floor in
``appliance-uidvalidity`` keeps the UID from being reused), and every file
this store adds later (deliveries, APPEND, COPY, files another tool drops into
``cur/``) is named with its UID. A rebuild rewrites the list from what it
imported, so it always describes the current index.

Format: ``A2 V<uidvalidity>`` on the first line, then ``<uid> <stem>`` per line.
A list whose UIDVALIDITY is not the folder's is ignored (the folder was re-created).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.fsutil import atomic_write
from appliance.mailstore.maildir import uid_in

if TYPE_CHECKING:
    import sqlite3

UID_MAP = "appliance-uidmap"
_HEADER = "A2"


def write_uidmap(db: sqlite3.Connection, mailbox_id: int, folder: Path, uidvalidity: int) -> int:
    """Write FOLDER's list from the index rows whose stem does not name their UID; how many it holds.

    Removes the list when there is no such row. Call before the transaction that created the
    rows commits: a crash in between leaves a list for an index that does not exist, which the
    next import overwrites.
    """
    # Most such stems have no ",U=" at all: SQLite joins those into one string, one allocation the
    # C heap gives back, rather than 100,000 Python strings (small objects whose memory arenas a
    # few long-lived neighbours can pin: why import_folder stages its names in SQLite too). The
    # few that carry another UID (a UID claimed twice, renumbered at import) are checked here.
    (joined,) = db.execute(
        "SELECT group_concat(uid || ' ' || stem, char(10)) FROM messages WHERE mailbox_id = ? AND instr(stem, ',U=') = 0",
        (mailbox_id,)).fetchone()
    odd = [f"{uid} {stem}" for uid, stem in db.execute(
        "SELECT uid, stem FROM messages WHERE mailbox_id = ? AND instr(stem, ',U=') > 0", (mailbox_id,))
        if uid_in(stem) != uid]
    count = (joined.count("\n") + 1 if joined else 0) + len(odd)
    path = folder / UID_MAP
    if not count:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return 0
    parts = [f"{_HEADER} V{uidvalidity}", *([joined] if joined else []), *odd]
    atomic_write(path, "\n".join(parts) + "\n", mode=0o600)
    return count


def read_uidmap(folder: Path, uidvalidity: int | None) -> dict[str, int]:
    """{stem: uid} from FOLDER's list, if it was written under UIDVALIDITY; else {}."""
    if uidvalidity is None:
        return {}
    try:
        with open(folder / UID_MAP, encoding="utf-8", errors="strict") as fh:
            header = fh.readline().split()
            if header != [_HEADER, f"V{uidvalidity}"]:
                return {}
            known: dict[str, int] = {}
            for line in fh:
                uid, _, stem = line.rstrip("\n").partition(" ")
                if uid.isdigit() and stem:
                    known.setdefault(stem, int(uid))
            return known
    except (FileNotFoundError, UnicodeDecodeError):
        return {}
