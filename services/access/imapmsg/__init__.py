"""Message semantics for IMAP: pure functions over raw message bytes and record metadata.

No I/O, no Twisted, no storage. Replaces ``services/access/mime.py`` and ``search.py``.
Input is the stored message (CRLF line ends; bare LFs are made CRLF first, as IMAP needs).
Where the RFCs leave a choice, the output is byte-identical to Dovecot 2.3
(tests/imapmsg/test_*vs_dovecot.py), so the box and the reference server agree.

The contract (CONTRACTS.md, "C2"):

    envelope(data) -> bytes                         ENVELOPE (RFC 9051 §7.5.2)
    bodystructure(data, extended) -> bytes          BODYSTRUCTURE (extended) / BODY
    section(data, sec) -> bytes | None              BODY[sec]; None: no such part (send "")
    binary(data, sec) -> bytes | None               BINARY[sec] decoded; None: unknown transfer
                                                    encoding (NO [UNKNOWN-CTE], RFC 3516 §4.3);
                                                    a part that does not exist gives b""
    MessageView                                     uid seq flags size internaldate modseq recent data()
    matches(key, view, ctx) -> bool                 SEARCH (RFC 9051 §6.4.4)
    SearchContext(max_seq, max_uid, saved=None)     "*" for numbers and UIDs; saved: the SEARCHRES
                                                    result as UIDs (RFC 5182 "$")
    sort(views, criteria) -> list[int]              SORT (RFC 5256 §3): UIDs in order;
                                                    criteria ((key, reverse), ...)
    thread(views, algorithm) -> list[tuple]         THREAD (RFC 5256 §4): nested tuples of UIDs
    serialize_thread(threads) -> bytes              "(1)(2 3 (4)(5))"

Additions (backwards compatible):
- ``Message(data, rev2=False)`` parses once and has the same operations as methods
  (``envelope() bodystructure(extended) section(sec) binary(sec) binary_size(sec)``): use it
  when one FETCH asks several items of a message; the functions above reparse each time.
- ``binary_size(data, sec)``: BINARY.SIZE, the length of BINARY[sec] (None: unknown CTE).
- ``partial(value, origin, count)``: the <origin.count> slice (RFC 9051 §6.4.5).
- ``bodystructure(..., rev2=True)`` / ``section(..., rev2=True)`` / ``Message(data, rev2=True)``:
  message/global is an encapsulated message (RFC 9051 §9 media-message). Without it, it is
  an opaque part, as in IMAP4rev1's grammar and in Dovecot. Pass it once IMAP4rev2 is
  enabled; cache BODYSTRUCTURE under a different key then.
- ``compile_search(key, ctx=None) -> SearchProgram``: compile once per SEARCH, then
  ``program.matches(view, ctx)`` per message. ``program.metadata_only`` is True when no key
  needs headers or body: the search can run over index records without message files.
  Content is read (``view.data()``) only when a content key still decides; a view may also
  offer ``headers() -> bytes`` (the header block) so header-only keys skip the body.
  ``SearchContext`` also has ``tz`` (zone for BEFORE/ON/SINCE, default UTC like INTERNALDATE)
  and ``now`` (for OLDER/YOUNGER). ``SearchError``: a key this evaluator does not know.
- ``header_values(data, name) -> list[str]``: decoded values of a top-level header field.
- ``base_subject(subject) -> (base, is_reply_or_forward)``: RFC 5256 §2.1.
- ``UnknownCTE``: raised by ``sections.binary_of`` (the functions above return None instead).
"""

from __future__ import annotations

from services.access.imapmsg import bodystructure as _bs
from services.access.imapmsg import envelope as _env
from services.access.imapmsg import mimetree, sections
from services.access.imapmsg.search import (
    MessageView,
    SearchContext,
    SearchError,
    SearchProgram,
    compile_search,
    matches,
)
from services.access.imapmsg.sections import UnknownCTE, partial
from services.access.imapmsg.sort import base_subject, sort
from services.access.imapmsg.textsearch import header_values
from services.access.imapmsg.thread import serialize_thread, thread
from services.access.imapproto.types import Section

__all__ = [
    "Message", "MessageView", "SearchContext", "SearchError", "SearchProgram", "UnknownCTE", "binary",
    "base_subject", "binary_size", "bodystructure", "compile_search", "envelope", "header_values", "matches",
    "partial", "section", "serialize_thread", "sort", "thread",
]


class Message:
    """One message's bytes and its MIME tree (parsed on first use)."""

    def __init__(self, data: bytes, rev2: bool = False) -> None:
        self.data = mimetree.crlf(data)
        self.rev2 = rev2
        self._tree: mimetree.Part | None = None

    @property
    def tree(self) -> mimetree.Part:
        if self._tree is None:
            self._tree = mimetree.parse(self.data, self.rev2)
        return self._tree

    def envelope(self) -> bytes:
        # The top-level header is all ENVELOPE needs: without a parsed tree, the body is never scanned.
        if self._tree is None:
            return _env.envelope_of(mimetree.header_fields(self.data))
        return _env.envelope_of(self._tree.fields)

    def bodystructure(self, extended: bool) -> bytes:
        return _bs.write_root(self.data, self.tree, extended)

    def section(self, sec: Section) -> bytes | None:
        return sections.extract(self.data, self.tree, sec)

    def binary(self, sec: Section) -> bytes | None:
        try:
            found = sections.binary_of(self.data, self.tree, sec.part)
        except UnknownCTE:
            return None
        return b"" if found is None else found

    def binary_size(self, sec: Section) -> int | None:
        found = self.binary(sec)
        return None if found is None else len(found)


def envelope(data: bytes) -> bytes:
    return _env.envelope(data)


def bodystructure(data: bytes, extended: bool, rev2: bool = False) -> bytes:
    return Message(data, rev2).bodystructure(extended)


def section(data: bytes, sec: Section, rev2: bool = False) -> bytes | None:
    return Message(data, rev2).section(sec)


def binary(data: bytes, sec: Section) -> bytes | None:
    return Message(data).binary(sec)


def binary_size(data: bytes, sec: Section) -> int | None:
    return Message(data).binary_size(sec)
