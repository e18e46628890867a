"""An account's mail store: INBOX plus Maildir++ folders, subscriptions, special uses, quota.

INBOX is the account's Maildir itself; any other mailbox is a ``.Name``
directory beside INBOX's ``cur/new/tmp`` (names.py has the on-disk spelling).
The account's index (index.py) holds one row per mailbox; at open it is
reconciled with the directories, so folders made by other tools, by the old
store or by a lost index are imported (rebuild.py).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from appliance.fsutil import atomic_write
from appliance.mailstore.errors import MailstoreError
from appliance.mailstore.fill import fill_in_background
from appliance.mailstore.index import Index, account_lock
from appliance.mailstore.mailbox import Mailbox
from appliance.mailstore.names import DELIMITER, check_name, dir_name, name_of_dir
from appliance.mailstore.quota import QuotaLimits, pending_new, quota_error
from appliance.mailstore.rebuild import import_folder

# RFC 6154 attributes for the conventional names of the configured special folders.
SPECIAL_USE_NAMES = {"sent": "\\Sent", "drafts": "\\Drafts", "trash": "\\Trash", "junk": "\\Junk",
                     "spam": "\\Junk", "archive": "\\Archive"}
SPECIAL_USES = frozenset({"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"})
# One name a line, as Dovecot's Maildir++ and the old store keep it: a file rather than an index
# table, so subscriptions survive a lost index.
SUBSCRIPTIONS = "subscriptions"
_DELETED = "appliance-deleted-"  # a mailbox directory being removed (not a Maildir++ name)


class MailboxStatus(NamedTuple):
    messages: int
    recent: int
    uidnext: int
    uidvalidity: int
    unseen: int
    deleted: int
    size: int  # RFC 8438 STATUS=SIZE: sum of RFC822.SIZE
    highestmodseq: int


class Usage(NamedTuple):
    bytes: int
    messages: int


def make_maildir(path: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True, mode=0o700)


class MailStore:
    """One account's mail. Blocking and thread-safe: call from worker threads, never the reactor."""

    def __init__(self, root: Path, index: Index, quota: QuotaLimits | None = None) -> None:
        self.root = root
        self.index = index
        self.quota = quota  # checked by append/copy_to (NO [OVERQUOTA]); None: unlimited
        self._boxes: dict[str, Mailbox] = {}
        self._boxes_lock = threading.Lock()
        self.closed = False
        self.filled: threading.Event | None = None  # set when the background fill is done

    @classmethod
    def open(cls, root: str | Path, special_folders: Iterable[str] = (), outbox: str = "",
             quota: QuotaLimits | None = None, background_fill: bool = True) -> MailStore:
        """Open ROOT's store, creating INBOX, the special folders and the Outbox (subscribed when created).

        BACKGROUND_FILL: complete what an import left for later (fill.py) in a thread; without it
        the rows are completed on demand only.
        """
        root = Path(root)
        make_maildir(root)
        with account_lock(root):
            store = cls(root, Index.open(root), quota)
            store._reconcile([*special_folders, *([outbox] if outbox else [])])
        if background_fill:
            store.filled = fill_in_background(store)
        return store

    def finish_fill(self) -> None:
        """Wait until the background fill (fill.py) of this store has ended."""
        if self.filled is not None:
            self.filled.wait()

    def _path(self, name: str) -> Path:
        return self.root if name == "INBOX" else self.root / dir_name(name)

    def _reconcile(self, wanted: list[str]) -> None:
        on_disk: dict[str, Path] = {"INBOX": self.root}
        for entry in os.listdir(self.root):
            if entry.startswith(_DELETED):
                shutil.rmtree(self.root / entry, ignore_errors=True)  # a DELETE interrupted by a crash
                continue
            name = name_of_dir(entry)
            if name is not None and name != "INBOX" and os.path.isdir(self.root / entry / "cur"):
                on_disk[name] = self.root / entry
        specials = {check_name(n): SPECIAL_USE_NAMES.get(n.lower()) for n in wanted}
        with self.index.write() as db:
            rows = {r[0]: (r[1], r[2]) for r in db.execute("SELECT name, id, special_use FROM mailboxes")}
            for name, (mid, _) in rows.items():
                if name not in on_disk:  # removed by hand: forget it
                    for table in ("messages", "cache", "expunged", "keywords"):
                        db.execute(f"DELETE FROM {table} WHERE mailbox_id = ?", (mid,))
                    db.execute("DELETE FROM mailboxes WHERE id = ?", (mid,))
            new_subs: set[str] = set()
            for name, path in on_disk.items():
                if name not in rows:
                    import_folder(db, name, path, specials.get(name))
                    if name in specials and not (self.root / SUBSCRIPTIONS).exists():
                        # `appliance user add` makes the special folders on disk before the
                        # first login: subscribe them when first indexed, as if created here.
                        # A box with a subscriptions file (an older store's) keeps its choices.
                        new_subs.add(name)
            for name, use in specials.items():
                if name not in on_disk:
                    # Subscribe what is new; a user's later UNSUBSCRIBE is not undone at the next login.
                    make_maildir(self._path(name))
                    import_folder(db, name, self._path(name), use)
                    new_subs.add(name)
                elif use is not None:
                    db.execute("UPDATE mailboxes SET special_use = ? WHERE name = ? AND special_use IS NULL",
                               (use, name))
            if not (self.root / SUBSCRIPTIONS).exists():
                new_subs.add("INBOX")
        if new_subs:
            self._write_subscriptions(self.subscriptions() | new_subs)

    # --- mailboxes -------------------------------------------------------------------

    def names(self) -> list[str]:
        with self.index.read() as db:
            names = sorted(r[0] for r in db.execute("SELECT name FROM mailboxes WHERE name != 'INBOX'"))
        return ["INBOX", *names]

    def exists(self, name: str) -> bool:
        try:
            name = check_name(name)
        except MailstoreError:
            return False
        with self.index.read() as db:
            return db.execute("SELECT 1 FROM mailboxes WHERE name = ?", (name,)).fetchone() is not None

    def special_use(self, name: str) -> str | None:
        with self.index.read() as db:
            row = db.execute("SELECT special_use FROM mailboxes WHERE name = ?", (check_name(name),)).fetchone()
        return row[0] if row else None

    def attributes(self, name: str) -> list[str]:
        """RFC 3348 \\HasChildren/\\HasNoChildren and the RFC 6154 special use of NAME."""
        name = check_name(name)
        prefix = name + DELIMITER
        with self.index.read() as db:
            # Children sort between "name." and "name/" ("/" follows "." in every encoding).
            child = db.execute("SELECT 1 FROM mailboxes WHERE name > ? AND name < ? LIMIT 1",
                               (prefix, name + chr(ord(DELIMITER) + 1))).fetchone()
            row = db.execute("SELECT special_use FROM mailboxes WHERE name = ?", (name,)).fetchone()
        attrs = ["\\HasChildren" if child else "\\HasNoChildren"]
        if row and row[0]:
            attrs.append(row[0])
        return attrs

    def mailbox(self, name: str) -> Mailbox:
        """The mailbox NAME; MailstoreError(code=NONEXISTENT) if there is none."""
        try:
            name = check_name(name)
        except MailstoreError as exc:
            raise MailstoreError(exc.text, code="NONEXISTENT") from None
        with self.index.read() as db:
            row = db.execute("SELECT id, uidvalidity FROM mailboxes WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise MailstoreError(f"mailbox {name} does not exist", code="NONEXISTENT")
        with self._boxes_lock:
            box = self._boxes.get(name)
            if box is None or box.id != row[0]:
                box = self._boxes[name] = Mailbox(self, row[0], name, row[1], self._path(name))
        return box

    def create(self, name: str, special_use: str | None = None) -> None:
        """CREATE (RFC 3501 §6.3.3; a trailing delimiter only declares the intent to have children)."""
        name = check_name(name[:-1] if name.endswith(DELIMITER) and len(name) > 1 else name)
        if special_use is not None and special_use not in SPECIAL_USES:
            raise MailstoreError(f"unknown special use {special_use}", code="USEATTR")  # RFC 6154 §3
        with self.index.write() as db:
            if name == "INBOX" or db.execute("SELECT 1 FROM mailboxes WHERE name = ?", (name,)).fetchone():
                raise MailstoreError(f"mailbox {name} already exists", code="ALREADYEXISTS")
            # RFC 3501 §6.3.3: the server SHOULD create the superior names CREATE a.b.c needs.
            parts = name.split(DELIMITER)
            for depth in range(1, len(parts)):
                parent = DELIMITER.join(parts[:depth])
                if parent != "INBOX" and not db.execute("SELECT 1 FROM mailboxes WHERE name = ?",
                                                        (parent,)).fetchone():
                    make_maildir(self._path(parent))
                    import_folder(db, parent, self._path(parent), None)
            make_maildir(self._path(name))
            import_folder(db, name, self._path(name), special_use)

    def delete(self, name: str) -> None:
        name = check_name(name)
        if name == "INBOX":
            raise MailstoreError("INBOX cannot be deleted", code="CANNOT")  # RFC 3501 §6.3.4
        with self.index.write() as db:
            row = db.execute("SELECT id FROM mailboxes WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise MailstoreError(f"mailbox {name} does not exist", code="NONEXISTENT")
            for table in ("messages", "cache", "expunged", "keywords"):
                db.execute(f"DELETE FROM {table} WHERE mailbox_id = ?", (row[0],))
            db.execute("DELETE FROM mailboxes WHERE id = ?", (row[0],))
            # Renamed away first, so the mailbox vanishes at once; RFC 3501 §6.3.9: its
            # subscription stays.
            gone = self.root / f"{_DELETED}{row[0]}-{time.time_ns()}"
            os.rename(self._path(name), gone)
        with self._boxes_lock:
            self._boxes.pop(name, None)
        shutil.rmtree(gone, ignore_errors=True)

    def rename(self, old: str, new: str) -> None:
        """RENAME with the children (RFC 3501 §6.3.5); RENAME INBOX moves its messages (RFC 9051 §6.3.6)."""
        old, new = check_name(old), check_name(new)
        if new == "INBOX" or self.exists(new):
            raise MailstoreError(f"mailbox {new} already exists", code="ALREADYEXISTS")
        if old == "INBOX":
            self.create(new)
            inbox = self.mailbox("INBOX")
            inbox.move_to(list(inbox.state().uids), self.mailbox(new))
            return
        moved: list[tuple[str, str]] = []
        with self.index.write() as db:
            names = [r[0] for r in db.execute("SELECT name FROM mailboxes")]
            if old not in names:
                raise MailstoreError(f"mailbox {old} does not exist", code="NONEXISTENT")
            for n in names:
                if n == old or n.startswith(old + DELIMITER):
                    target = check_name(new + n[len(old):])
                    if target in names:
                        raise MailstoreError(f"mailbox {target} already exists", code="ALREADYEXISTS")
                    moved.append((n, target))
            for n, target in moved:
                os.rename(self._path(n), self._path(target))
                db.execute("UPDATE mailboxes SET name = ? WHERE name = ?", (target, n))
        with self._boxes_lock:
            for n, target in moved:
                box = self._boxes.pop(n, None)
                if box is not None:
                    box.name = target
                    box._set_path(self._path(target))
                    self._boxes[target] = box

    def subscriptions(self) -> set[str]:
        try:
            return {line for line in (self.root / SUBSCRIPTIONS).read_text().splitlines() if line}
        except (FileNotFoundError, UnicodeDecodeError):
            return set()

    def _write_subscriptions(self, subs: set[str]) -> None:
        atomic_write(self.root / SUBSCRIPTIONS, "".join(f"{s}\n" for s in sorted(subs)), mode=0o600)

    def subscribe(self, name: str, on: bool = True) -> None:
        name = check_name(name)
        with account_lock(self.root):  # read-modify-write, also against other processes
            subs = self.subscriptions()
            if (name in subs) != on:
                self._write_subscriptions(subs | {name} if on else subs - {name})

    def status(self, name: str) -> MailboxStatus:
        box = self.mailbox(name)
        box.sync()  # STATUS shows what the relay delivered meanwhile
        with self.index.read() as db:
            uidnext, hms, count, first_recent = box._row(db)
            unseen, deleted, size = db.execute("SELECT unseen, deleted, bytes FROM mailboxes WHERE id = ?",
                                               (box.id,)).fetchone()
            recent = db.execute("SELECT count(*) FROM messages WHERE mailbox_id = ? AND uid >= ?",
                                (box.id, first_recent)).fetchone()[0]
        return MailboxStatus(count, recent, uidnext, box.uidvalidity, unseen, deleted, size, hms)

    # --- quota -----------------------------------------------------------------------

    def usage(self) -> Usage:
        """The whole account (RFC 9208 STORAGE and MESSAGE): indexed mail plus deliveries not yet indexed."""
        with self.index.read() as db:
            b, m = db.execute("SELECT coalesce(sum(bytes), 0), coalesce(sum(messages), 0) FROM mailboxes").fetchone()
        nb, nm = pending_new(self.root)
        return Usage(b + nb, m + nm)

    def check_quota(self, add_bytes: int, add_messages: int) -> None:
        """MailstoreError(code=OVERQUOTA) if adding this much would exceed the account's quota."""
        if self.quota is None or self.quota.unlimited:
            return
        err = quota_error(self.usage(), self.quota, add_bytes, add_messages)
        if err is not None:
            raise MailstoreError(err.text, code="OVERQUOTA")  # RFC 9208 §4.3 / RFC 5530

    def close(self) -> None:
        self.closed = True  # the background fill stops after its batch
        self.index.close()
