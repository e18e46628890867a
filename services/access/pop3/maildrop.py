"""The POP3 maildrop: a snapshot of the INBOX for one session, its exclusive lock, and the UPDATE state.

Everything here but ``MaildropLocks`` blocks (SQLite, files): the session calls
it through ``deferToThread``, never on the reactor.

Message numbers are positions in the snapshot taken when the session entered
the TRANSACTION state (RFC 1939 §5: they stay the same for the whole session;
mail delivered meanwhile shows up in the next session). Unique ids are the
store's UIDVALIDITY and UID, so they survive restarts and a rebuilt index
(RFC 1939 §7 UIDL: "the unique-id of a message ... persists across sessions").
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Callable
from typing import IO

from appliance.mailstore import Mailbox, MailStore, MailstoreError, maildir_path, open_store
from services.access.backend import Backend
from services.access.pop3.wire import MessageEncoder

CHUNK = 65536  # octets read from a message file at a time (the per-session buffer stays about this size)
SEEN = "\\Seen"


class MaildropLocks:
    """RFC 1939 §8: the server acquires an exclusive lock on the maildrop for a session in TRANSACTION.

    In-process: every POP3 session of the box runs in this one access process (a
    restart ends the sessions with their locks). Reactor thread only.
    """

    def __init__(self) -> None:
        self._held: set[str] = set()

    def acquire(self, address: str) -> bool:
        key = address.lower()
        if key in self._held:
            return False
        self._held.add(key)
        return True

    def release(self, address: str) -> None:
        self._held.discard(address.lower())

    def held(self, address: str) -> bool:
        return address.lower() in self._held


LOCKS = MaildropLocks()  # one per process: the pop3 and pop3s listeners share it


class Maildrop:
    """The INBOX as one session sees it. Open with ``Maildrop.open`` in a worker thread.

    Nothing to close: the store is the process's shared one (``Backend.mailstore`` ->
    ``appliance.mailstore.open_store``, an LRU that closes what it evicts), which IMAP
    sessions of the account may be using too.
    """

    def __init__(self, store: MailStore, mailbox: Mailbox, uids: array, sizes: array) -> None:
        self.store = store
        self.mailbox = mailbox
        self.uidvalidity: int = mailbox.uidvalidity
        self.uids = uids  # message number n is uids[n - 1]
        self.sizes = sizes  # octets with CRLF line endings (RFC 1939 §5 STAT/LIST "exact size")

    @classmethod
    def open(cls, store_factory: Callable[[], MailStore]) -> Maildrop:
        """Blocking. Pick up new deliveries and take the snapshot."""
        store = store_factory()
        mailbox = store.mailbox("INBOX")
        mailbox.sync()
        uids = mailbox.state().uids
        by_uid = {r.uid: r.size for r in mailbox.records(uids)}
        # A message expunged between state() and records() is left out (it is gone already).
        kept = array("L", (u for u in uids if u in by_uid))
        return cls(store, mailbox, kept, array("Q", (by_uid[u] for u in kept)))

    def __len__(self) -> int:
        return len(self.uids)

    def unique_id(self, n: int) -> bytes:
        # The historic format of this box (UID, then UIDVALIDITY, 8 hex digits each): keeping it
        # means POP clients that leave mail on the server do not fetch everything again.
        return b"%08x%08x" % (self.uids[n - 1], self.uidvalidity)

    def open_message(self, n: int, body_lines: int | None) -> MessageReader:
        """Blocking. The file of message N, ready to stream; MailstoreError if it was removed meanwhile."""
        uid = self.uids[n - 1]
        for _ in range(3):  # a concurrent flag change (IMAP STORE) may rename the file under us
            try:
                fh = open(self.mailbox.path(uid), "rb")  # closed by MessageReader
            except FileNotFoundError:
                continue
            return MessageReader(fh, MessageEncoder(body_lines))
        raise MailstoreError(f"message {uid} no longer exists", code="EXPUNGEISSUED")

    def update(self, deleted: set[int], retrieved: set[int]) -> list[int]:
        """Blocking. RFC 1939 §6 UPDATE: remove the messages marked deleted; returns the numbers not removed.

        Retrieved messages that stay get \\Seen, as Dovecot's POP3 does, so a customer who
        also uses IMAP sees them as read.
        """
        kept_seen = [self.uids[n - 1] for n in sorted(retrieved - deleted)]
        if kept_seen:
            self.mailbox.store(kept_seen, "add", [SEEN])
        if not deleted:
            return []
        wanted = {self.uids[n - 1]: n for n in deleted}
        self.mailbox.expunge(sorted(wanted))
        # Whatever is still indexed was not removed; a message another session expunged is gone all the same.
        left = {r.uid for r in self.mailbox.records(sorted(wanted))}
        return sorted(wanted[u] for u in left)


class MessageReader:
    """One message file being sent; ``next_chunk`` (blocking) returns encoded octets, None at the end."""

    def __init__(self, fh: IO[bytes], encoder: MessageEncoder) -> None:
        self._fh: IO[bytes] | None = fh
        self._enc = encoder
        self._lock = threading.Lock()  # close() from another worker waits for a read in progress

    def next_chunk(self) -> bytes | None:
        with self._lock:
            if self._fh is None:
                return None
            out = b""
            while not out and not self._enc.done:
                data = self._fh.read(CHUNK)
                if not data:
                    break
                out = self._enc.encode(data)
            if out:
                return out
            self._fh.close()
            self._fh = None
            return self._enc.finish()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def account_store(backend: Backend, address: str) -> MailStore:
    """Blocking. The account's shared store (Backend.mailstore; the new store while that still builds the old one)."""
    store = backend.mailstore(address)
    if isinstance(store, MailStore):
        return store
    cfg = backend.cfg
    return open_store(maildir_path(cfg.paths.mail_dir, address), cfg.access.special_folders, cfg.access.outbox)
