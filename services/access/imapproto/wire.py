"""Serializer helpers: Python values -> IMAP response octets (RFC 9051 §9 / RFC 3501 §9).

Values are bytes or str (str is written as UTF-8).  Lines end in CRLF.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

from . import mutf7

_ATOM = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+\Z")
_ASTRING_ATOM = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5d-\x7a\x7c-\x7e]+\Z")
# What a quoted string can hold: TEXT-CHAR (no CR, LF, NUL), 7-bit unless UTF-8 is allowed.
_QUOTABLE7 = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*\Z")
_QUOTABLE8 = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\xff]*\Z")
_RESP_TEXT_BAD = re.compile(rb"[\r\n\x00]")
MAX_QUOTED = 1000  # longer strings go as literals: easier on clients with line-length limits
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
CRLF = b"\r\n"


def _b(x: bytes | str) -> bytes:
    return x.encode("utf-8") if isinstance(x, str) else bytes(x)


def atom(s: bytes | str) -> bytes:
    raw = _b(s)
    if not _ATOM.match(raw):
        raise ValueError(f"not an atom: {raw!r}")
    return raw


def quoted(s: bytes | str) -> bytes:
    """DQUOTE *QUOTED-CHAR DQUOTE, escaping "\\" and '"' (the only quoted-specials)."""
    raw = _b(s)
    if b"\r" in raw or b"\n" in raw or b"\x00" in raw:
        raise ValueError("CR, LF and NUL cannot be quoted; use literal()")
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def literal(data: bytes | str) -> bytes:
    raw = _b(data)
    return b"{%d}\r\n" % len(raw) + raw


def literal8(data: bytes) -> bytes:
    """RFC 3516 §4.3 literal8, for BINARY[] content that holds NUL."""
    return b"~{%d}\r\n" % len(data) + bytes(data)


def string(x: bytes | str, utf8: bool = False) -> bytes:
    """quoted when it can be (no CR/LF/NUL, 7-bit unless UTF8, at most 1000 octets), else a literal."""
    raw = _b(x)
    if len(raw) <= MAX_QUOTED and (_QUOTABLE8 if utf8 else _QUOTABLE7).match(raw):
        return quoted(raw)
    return literal(raw)


def astring(s: bytes | str, utf8: bool = False) -> bytes:
    raw = _b(s)
    if _ASTRING_ATOM.match(raw) and raw.upper() != b"NIL":
        return raw
    return string(raw, utf8)


def nstring(x: bytes | str | None, utf8: bool = False) -> bytes:
    return b"NIL" if x is None else string(x, utf8)


def mailbox(name: str, utf8: bool = False) -> bytes:
    """A mailbox name: UTF-8 once UTF8=ACCEPT / IMAP4rev2 is on (RFC 6855 §3), else modified UTF-7."""
    if name.upper() == "INBOX":
        return b"INBOX"
    return astring(name.encode("utf-8") if utf8 else mutf7.encode(name), utf8)


def flag_list(flags: Iterable[str]) -> bytes:
    return b"(" + b" ".join(_b(f) for f in flags) + b")"


def date_time(ts: float) -> bytes:
    """date-time in UTC: "dd-Mon-yyyy hh:mm:ss +0000" (RFC 9051 §9)."""
    t = time.gmtime(ts)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday, _MONTHS[t.tm_mon - 1].encode(), t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


def seqset(numbers: Iterable[int]) -> bytes:
    """Sorted ascending numbers -> compact sequence-set "1:3,5" (b"" for none)."""
    out: list[bytes] = []
    start = prev = None
    for n in numbers:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
        start = prev = n
    if start is not None:
        out.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
    return b",".join(out)


def _text(text: bytes | str) -> bytes:
    # resp-text is TEXT-CHARs: never let a CR/LF/NUL in a message break the line.
    return _RESP_TEXT_BAD.sub(b" ", _b(text))


def tagged(tag: bytes | str, status: bytes | str, text: bytes | str, code: bytes | str | None = None) -> bytes:
    """"<tag> OK|NO|BAD [code] text" CRLF (RFC 9051 §7.1)."""
    head = _b(tag) + b" " + _b(status).upper() + b" "
    if code:
        head += b"[" + _text(code) + b"] "
    return head + _text(text) + CRLF


def untagged(body: bytes | str) -> bytes:
    return b"* " + _b(body) + CRLF


def continuation(text: bytes | str = b"Ready") -> bytes:
    return b"+ " + _text(text) + CRLF


def capability_line(caps: Iterable[str]) -> bytes:
    """The untagged CAPABILITY response line (RFC 9051 §7.2.2)."""
    return untagged(b"CAPABILITY " + b" ".join(atom(c) for c in caps))
