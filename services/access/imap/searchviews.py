"""Views of the selected mailbox's messages for SEARCH/SORT/THREAD (C2's MessageView protocol).

Built in a worker thread from index records; a message's bytes are read only if a search
key needs them (``data()`` is lazy), so flag/size/date searches touch the index alone.
"""

from __future__ import annotations

from typing import Any

from services.access.imapproto.types import SearchKey

BATCH = 5000


class View:
    __slots__ = ("_data", "_mbox", "flags", "internaldate", "modseq", "recent", "seq", "size", "uid")

    def __init__(self, mbox: Any, rec: Any, seq: int, recent: bool) -> None:
        self._mbox = mbox
        self.uid = rec.uid
        self.seq = seq
        self.flags = rec.flags
        self.size = rec.size
        self.internaldate = rec.internaldate
        self.modseq = rec.modseq
        self.recent = recent
        self._data: bytes | None = None

    def data(self) -> bytes:
        if self._data is None:
            from appliance.mailstore import MailstoreError

            try:
                self._data = self._mbox.read(self.uid)
            except MailstoreError:
                self._data = b""  # expunged meanwhile: matches nothing on content
        return self._data


def has_modseq(key: SearchKey) -> bool:
    if key.op == "MODSEQ":
        return True
    return any(isinstance(a, SearchKey) and has_modseq(a) for a in key.args)


def views(sel: Any) -> list[View]:
    """Every message of SEL's view (held expunges left out), ascending."""
    uids = sel.live(list(sel.uids))
    seqs = {u: i for i, u in enumerate(sel.uids, 1)}
    out: list[View] = []
    for i in range(0, len(uids), BATCH):
        for rec in sel.mailbox.records(uids[i:i + BATCH]):
            out.append(View(sel.mailbox, rec, seqs[rec.uid], rec.uid in sel.recent))
    return out


def evaluate(sel: Any, key: SearchKey) -> tuple[list[View], list[View]]:
    """In a worker thread: (matching views, all views)."""
    from services.access.imapmsg.search import SearchContext, compile_search

    every = views(sel)
    ctx = SearchContext(max_seq=len(sel.uids), max_uid=sel.uids[-1] if sel.uids else 0,
                        saved=tuple(sel.saved or ()) if sel.saved_set else None)
    program = compile_search(key, ctx)
    return [v for v in every if program.matches(v)], every


# System-flag keys the index answers by itself (RFC 9051 §6.4.4); \Recent is session state, so
# NEW/OLD/RECENT are not here.
_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True), "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True), "UNDRAFT": ("\\Draft", False),
    "FLAGGED": ("\\Flagged", True), "UNFLAGGED": ("\\Flagged", False),
    "SEEN": ("\\Seen", True), "UNSEEN": ("\\Seen", False),
}


def flag_terms(key: SearchKey) -> tuple[list[str], list[str]] | None:
    """(flags present, flags absent) if KEY is ALL and system-flag keys joined by AND; else None."""
    present: list[str] = []
    absent: list[str] = []
    todo = [key]
    while todo:
        k = todo.pop()
        if k.op == "AND" and all(isinstance(x, SearchKey) for x in k.args):
            todo.extend(k.args)
        elif k.op in _FLAG_KEYS:
            flag, on = _FLAG_KEYS[k.op]
            (present if on else absent).append(flag)
        elif k.op != "ALL":
            return None
    return present, absent


def flag_search(sel: Any, present: list[str], absent: list[str], text: bool = False) -> Any:
    """In a worker thread: the UIDs of SEL's view matching the flag terms, filtered inside SQLite
    (SEARCH UNSEEN over 100,000 messages without building a view of each, issue 13): an array,
    or with TEXT the ASCII decimals joined by spaces (made by SQLite, for a plain UID SEARCH).

    The view is every UID in the index up to its last one: UIDs only grow (RFC 9051 §2.3.1.1),
    so what arrived since (no EXISTS yet) is above it; what it holds as expunged but not yet
    reported is no longer in the index, and matches nothing (as in ``views``).
    """
    last = sel.uids[-1] if sel.uids else 0
    if text:
        return sel.mailbox.uid_text_with(present, absent, upto=last)
    return sel.mailbox.uids_with(present, absent, upto=last)
