"""The searchable text of a message for SEARCH (RFC 9051 §6.4.4) and the base subject of SORT.

Strings are compared as RFC 9051 §6.4.4 says: "case-insensitive substring" on the decoded
text. Decoding is what Dovecot does, the reference of the differential:

- header values are unfolded (a line break and the whitespace after it become one space)
  and RFC 2047 encoded words are decoded; raw 8-bit values are read as UTF-8 (RFC 6532);
- address fields are matched in the form ``Name <mailbox@domain>`` (groups as
  ``Group: ...;``), so a search can span the name and the address;
- BODY searches the decoded content of text/* and message/* leaf parts only (transfer
  encoding undone, the part's charset applied), never MIME headers, preamble or epilogue;
- TEXT searches every header block (the message's, the parts', encapsulated messages')
  as ``Name: value`` lines, and then what BODY searches.
Case folding is i;unicode-casemap-like (RFC 5051): NFKD, then a per-character case mapping
(so "ß" and "ss" differ, as in Dovecot).
"""

from __future__ import annotations

import codecs
import email.header
import re
import unicodedata
from collections.abc import Callable

from services.access.imapmsg import mimetree, sections
from services.access.imapmsg.envelope import Address, parse_addresses

ADDRESS_FIELDS = frozenset({"from", "sender", "reply-to", "to", "cc", "bcc", "resent-from", "resent-to",
                            "resent-cc", "resent-bcc", "resent-sender"})
_FOLD = re.compile(rb"\r?\n[ \t]*")
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


def fold_case(s: str) -> str:
    """i;unicode-casemap (RFC 5051 §2): decompose (NFKD) and map case character by character."""
    if s.isascii():
        return s.lower()
    return unicodedata.normalize("NFKD", s).lower()


def to_text(raw: bytes, charset: str = "utf-8") -> str:
    """Bytes in CHARSET as str; an unknown charset or invalid bytes never fail a search."""
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "utf-8"
    try:
        return raw.decode(charset)
    except UnicodeDecodeError:
        if charset.lower().replace("_", "-") in ("utf-8", "utf8", "us-ascii", "ascii"):
            # 8-bit text labelled (or defaulted to) US-ASCII is nearly always UTF-8 (RFC 6532);
            # if not even that, keep every byte visible as Latin-1.
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw.decode("latin-1")
        return raw.decode(charset, "replace")


def decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded; whitespace between adjacent encoded words dropped (§6.2)."""
    if "=?" not in value or not _ENCODED_WORD.search(value):
        return value
    try:
        parts = email.header.decode_header(value)
    except (ValueError, LookupError, UnicodeError, AssertionError):
        return value
    out = []
    for chunk, cs in parts:
        if isinstance(chunk, str):
            out.append(chunk)
        else:
            out.append(to_text(chunk, cs or "utf-8"))
    return "".join(out)


def unfold(value: bytes) -> bytes:
    return _FOLD.sub(b" ", value).strip(b" \t\r\n")


def field_text(f: mimetree.HeaderField) -> str:
    """A field's value as a person reads it (unfolded, encoded words decoded)."""
    raw = unfold(f.value)
    text = to_text(raw)
    if f.lname in ADDRESS_FIELDS:
        return addresses_text(parse_addresses(raw)) or decode_words(text)
    return decode_words(text)


def header_values(data: bytes, name: str) -> list[str]:
    """The decoded values of the top-level fields NAME of message DATA, in order."""
    top = mimetree.parse_header_only(mimetree.crlf(data))
    return [field_text(f) for f in top.header(name)]


def addresses_text(addrs: list[Address]) -> str:
    out: list[str] = []
    in_group = False
    for a in addrs:
        if a.group and a.mailbox is not None:
            out.append(decode_words(a.mailbox) + ":")
            in_group = True
            continue
        if a.is_group_end:
            if out:
                out[-1] += ";"
            in_group = False
            continue
        spec = f"{a.mailbox}@{a.domain}"
        item = f"{decode_words(a.name)} <{spec}>" if a.name else spec
        if in_group and out and out[-1].endswith(":"):
            out[-1] += " " + item
        else:
            out.append(item)
    return ", ".join(out)


def searchable_leaf(part: mimetree.Part) -> bool:
    mtype = part.media_type[0]
    return not part.multipart and part.message is None and mtype in ("text", "message")


class Content:
    """Lazily computed searchable text of one message (folded case).

    GET_DATA loads the message; GET_HEADER, if given, loads only its header block (e.g. from
    a cache), so header keys never read the whole file.
    """

    def __init__(self, get_data: Callable[[], bytes], get_header: Callable[[], bytes] | None = None) -> None:
        self._get_data = get_data
        self._get_header = get_header
        self._data: bytes | None = None
        self._tree: mimetree.Part | None = None
        self._top: mimetree.Part | None = None
        self._body: list[str] | None = None
        self._headers: str | None = None
        self._by_name: dict[str, list[str]] = {}

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = mimetree.crlf(self._get_data())
        return self._data

    @property
    def tree(self) -> mimetree.Part:
        if self._tree is None:
            self._tree = mimetree.parse(self.data)
        return self._tree

    @property
    def top(self) -> mimetree.Part:
        """The top-level header (without parsing the body)."""
        if self._top is None:
            if self._tree is not None:
                self._top = self._tree
            elif self._data is None and self._get_header is not None:
                self._top = mimetree.parse_header_only(mimetree.crlf(self._get_header()))
            else:
                self._top = mimetree.parse_header_only(self.data)
        return self._top

    def header(self, name: str) -> list[str] | None:
        """Folded-case decoded values of the top-level fields NAME; None if there is none."""
        lname = name.lower()
        if lname not in self._by_name:
            self._by_name[lname] = [fold_case(field_text(f)) for f in self.top.header(lname)]
        return self._by_name[lname] or None

    def raw_header(self, name: str) -> mimetree.HeaderField | None:
        """The last top-level field NAME as stored."""
        return self.top.last(name)

    def body(self) -> list[str]:
        if self._body is None:
            out = []
            for part in self.tree.walk():
                if not searchable_leaf(part):
                    continue
                decoded = sections.decode_body(self.data, part)
                if decoded is None:
                    decoded = self.data[part.body_start : part.end]
                out.append(fold_case(to_text(decoded, part.charset)))
            self._body = out
        return self._body

    def all_headers(self) -> str:
        if self._headers is None:
            lines = [f"{f.name}: {field_text(f)}" for p in self.tree.walk() for f in p.fields]
            self._headers = fold_case("\n".join(lines))
        return self._headers
