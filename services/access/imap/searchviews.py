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
                        saved=tuple(sel.saved) if sel.saved_set else None)
    program = compile_search(key, ctx)
    return [v for v in every if program.matches(v)], every
