"""A session's view of its selected mailbox (RFC 9051 §2.3.1.2 message sequence numbers).

The view holds its own sorted UID list: sequence number N is ``uids[N-1]`` and a UID's
number is found by bisection. The store changes underneath (other sessions, the relay,
POP); the view learns of that through ``gather`` (in a worker thread: what is new,
expunged or re-flagged since the MODSEQ it last saw) and reports it with ``apply`` at
the points the RFCs allow:
- RFC 3501 §7.4.1 / RFC 9051 §7.5.1: EXPUNGE is never sent while answering FETCH,
  STORE or SEARCH (SORT/THREAD too); held expunges stay in the list (their numbers do
  not move) until a command that may report them;
- RFC 7162 §3.2.10: with QRESYNC enabled, VANISHED replaces EXPUNGE;
- RFC 7162 §3.1.4.1 / §3.2.4: unsolicited FETCH carries MODSEQ once CONDSTORE is on,
  and UID once QRESYNC is on.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Any

from services.access.imap.errors import Bad
from services.access.imapproto.types import SequenceSet


def seqset(nums: list[int]) -> bytes:
    """NUMS as a compact sequence set ("1:3,5"), runs merged in the given order."""
    out: list[bytes] = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(b"%d" % nums[i] if i == j else b"%d:%d" % (nums[i], nums[j]))
        i = j + 1
    return b",".join(out)


def flag_list(flags: Any) -> bytes:
    return b"(" + " ".join(flags).encode("utf-8") + b")"


@dataclass
class Changes:
    """What ``gather`` found (computed in a worker thread, applied on the reactor)."""

    highestmodseq: int
    uidnext: int
    new: list[int]
    expunged: list[int]
    changed: list[Any]  # store Records with new flags
    recent: list[int] = field(default_factory=list)


class Selected:
    def __init__(self, mailbox: Any, name: str, readonly: bool, state: Any, recent: list[int]) -> None:
        self.mailbox = mailbox
        self.name = name
        self.readonly = readonly
        self.uidvalidity: int = mailbox.uidvalidity
        # 4 bytes a message (UIDs are 32-bit, RFC 9051 §2.3.1.1), not a list of int objects (~36),
        # and shared with the store's snapshot (state(shared=True)) until this view changes: 200
        # sessions on 100,000-message mailboxes stay within the RSS target (issue 13).
        self.uids: array[int] = state.uids
        self._shared_uids = True
        self.uidnext: int = state.uidnext
        self.modseq: int = state.highestmodseq
        self.recent: set[int] = set(recent)
        self.held: set[int] = set()  # expunged elsewhere, not yet reported
        self.own: dict[int, int] = {}  # uid -> modseq of changes this session already reported
        self.keywords: set[str] = set()
        self.saved: list[int] = []  # RFC 5182 SEARCHRES "$" (UIDs)
        self.saved_set = False  # RFC 5182 §2.1: before any SAVE, "$" is the empty set
        self.dirty = False

    # --- numbers -------------------------------------------------------------------------

    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        i = bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def resolve(self, seq: SequenceSet, by_uid: bool) -> list[int]:
        """The UIDs SEQ names, ascending. RFC 9051 §9: "*" is the largest number in use.

        Message numbers beyond the mailbox are an error (BAD); UIDs that do not exist are
        simply not there (RFC 9051 §6.4.8).
        """
        if seq.saved:
            # RFC 5182 §2.1: "$" is the saved result, as UIDs, minus what was expunged since.
            return [u for u in self.saved if self.seq_of(u) is not None]
        if not self.uids:
            # RFC 9051 §9 (seq-number): this "includes "*" if the selected mailbox is empty".
            if not by_uid and seq.ranges:
                raise Bad("invalid message sequence number: the mailbox is empty")
            return []
        out: list[int] = []
        if by_uid:
            for a, b in seq.normalized(self.uids[-1]):
                out.extend(self.uids[bisect_left(self.uids, a):bisect_right(self.uids, b)])
            return out
        n = len(self.uids)
        for a, b in seq.normalized(n):
            if b > n:
                raise Bad(f"invalid message sequence number {b} (the mailbox has {n})")
            out.extend(self.uids[a - 1:b])
        return out

    def live(self, uids: list[int]) -> list[int]:
        """UIDS without those expunged by others but not yet reported (their data is gone)."""
        return [u for u in uids if u not in self.held] if self.held else uids

    # --- updates -------------------------------------------------------------------------

    def _own_uids(self) -> None:
        """Copy on write: the UID array may be the store's shared snapshot."""
        if self._shared_uids:
            self.uids = array("I", self.uids)
            self._shared_uids = False

    def gather(self, sync: bool) -> Changes:
        """In a worker thread: what changed in the store since this view's MODSEQ.

        O(changes), not O(mailbox): new messages, flag changes and expunges all carry a
        MODSEQ above the last one seen (RFC 7162 §3.1.1; the index keeps expunged UIDs with
        theirs), so one indexed query finds them.
        """
        mb = self.mailbox
        if sync:
            mb.sync()  # pick up what the relay put in new/ (reads new/ only)
        changed, expunged = mb.changes_since(self.modseq)
        last = self.uids[-1] if self.uids else 0
        new = sorted(r.uid for r in changed if r.uid > last)
        highest = max([self.modseq, *(r.modseq for r in changed)])
        recent = mb.claim_recent() if (new and not self.readonly) else []
        uidnext = new[-1] + 1 if new else self.uidnext
        return Changes(highest, uidnext, new, list(expunged), list(changed), list(recent))

    def apply(self, ch: Changes, *, allow_expunge: bool, condstore: bool, qresync: bool,
              rev2: bool) -> list[bytes]:
        """The untagged responses for CH (each ending in CRLF); updates the view."""
        out: list[bytes] = []
        gone = [u for u in ch.expunged if self.seq_of(u) is not None and u not in self.held]
        self.held.update(gone)
        if allow_expunge and self.held:
            out += self._report_expunges(sorted(self.held), qresync)
            self.held.clear()
        new = [u for u in ch.new if not self.uids or u > self.uids[-1]]
        if new:
            self._own_uids()
            self.uids.extend(new)
            if not rev2:  # RFC 9051 Appendix E: IMAP4rev2 has no \Recent
                self.recent.update(ch.recent)
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            if not rev2:
                out.append(b"* %d RECENT\r\n" % len(self.recent))
        newset = set(new)
        for rec in ch.changed:
            if rec.uid in newset or rec.uid in self.held or self.own.get(rec.uid) == rec.modseq:
                continue
            seq = self.seq_of(rec.uid)
            if seq is None:
                continue
            out.append(self.fetch_flags(seq, rec, uid=qresync, modseq=condstore))
        self.own.clear()
        self.uidnext = max(self.uidnext, ch.uidnext)
        # Held expunges stay in self.held, so the MODSEQ may move past them.
        self.modseq = max(self.modseq, ch.highestmodseq)
        return out

    def _report_expunges(self, uids: list[int], qresync: bool) -> list[bytes]:
        out: list[bytes] = []
        self._own_uids()
        if qresync:
            for u in uids:
                i = bisect_left(self.uids, u)
                if i < len(self.uids) and self.uids[i] == u:
                    del self.uids[i]
            self.recent.difference_update(uids)
            out.append(b"* VANISHED " + seqset(uids) + b"\r\n")
            return out
        # Highest first: each EXPUNGE renumbers only the messages after it (RFC 9051 §7.5.1),
        # so reporting from the top keeps the remaining numbers as the client knows them.
        for u in reversed(uids):
            i = bisect_left(self.uids, u)
            if i < len(self.uids) and self.uids[i] == u:
                del self.uids[i]
                out.append(b"* %d EXPUNGE\r\n" % (i + 1))
        self.recent.difference_update(uids)
        return out

    def remove(self, uids: list[int], qresync: bool) -> list[bytes]:
        """This session expunged UIDS: report them now (EXPUNGE, MOVE, UID EXPUNGE)."""
        uids = sorted(set(uids) | self.held)
        self.held.clear()
        return self._report_expunges(uids, qresync)

    def flags_of(self, rec: Any) -> list[str]:
        flags = list(rec.flags)
        if rec.uid in self.recent:
            flags.append("\\Recent")
        return flags

    def fetch_flags(self, seq: int, rec: Any, *, uid: bool, modseq: bool) -> bytes:
        items = [b"FLAGS " + flag_list(self.flags_of(rec))]
        if uid:
            items.insert(0, b"UID %d" % rec.uid)
        if modseq:
            items.append(b"MODSEQ (%d)" % rec.modseq)
        return b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n"
