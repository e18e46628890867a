"""Message semantics for IMAP: pure functions over raw message bytes (CRLF) and record metadata.

No I/O, no Twisted, no storage. The server (``services/access/imap/``) calls:

    envelope(data) -> bytes                      ENVELOPE (RFC 9051 §7.5.2)
    bodystructure(data, extended, rev2=False)    BODYSTRUCTURE (extended) / BODY
    section(data, sec) -> bytes | None           BODY[sec] bytes; None: no such part (send "")
    binary(data, sec) -> bytes | None            BINARY[sec] decoded; None: unknown CTE (NO [UNKNOWN-CTE])
    binary_size(data, sec) -> int | None         BINARY.SIZE[sec]; None: unknown CTE
    partial(value, origin, count) -> bytes       <origin.count> of a section
    matches(key, view, ctx) -> bool              SEARCH (RFC 9051 §6.4.4)
    compile_search(key) -> SearchProgram         the same, compiled once for many messages
    sort(views, criteria) -> list[int]           SORT (RFC 5256 §3), UIDs in order
    thread(views, algorithm) -> list[Thread]     THREAD (RFC 5256 §4); serialize_thread(...)

Additions to the contract in CONTRACTS.md (backwards compatible):
- ``Message(data)`` parses once and offers the same operations as methods, for a FETCH
  that asks for several items of one message.
- ``bodystructure(..., rev2=True)``: message/global is shown as an encapsulated message
  (RFC 9051 §9 media-message); without it, as a basic part, as IMAP4rev1 and Dovecot do.
- ``binary`` of a part that does not exist returns ``b""`` only through ``Message.binary``
  with ``missing=b""``; the module function returns None for unknown CTE only and b"" for
  a missing part.
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
        return _env.envelope_of(self.tree)

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
