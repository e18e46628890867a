"""Lexical level of the IMAP grammar (RFC 9051 §9, RFC 3501 §9) over one assembled command.

A command arrives as the text of its lines (CRLFs removed) with each literal's octets kept
aside, keyed by the offset just after its "{n}" marker.  ``Cursor`` walks that text with
compiled regular expressions (no per-byte Python loops) and raises ``ProtocolError``.
"""

from __future__ import annotations

import datetime as dt
import re

from . import mutf7
from .types import STAR, ProtocolError, SequenceSet

# ATOM-CHAR: any CHAR (%x01-7F) except atom-specials: "(" ")" "{" SP CTL "%" "*" DQUOTE "\" "]".
_ATOM_CLASS = rb"\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e"
ATOM = re.compile(rb"[" + _ATOM_CLASS + rb"]+")
# ASTRING-CHAR = ATOM-CHAR / resp-specials ("]").
ASTRING_ATOM = re.compile(rb"[" + _ATOM_CLASS + rb"\]]+")
# list-char = ATOM-CHAR / list-wildcards / resp-specials.
LIST_ATOM = re.compile(rb"[" + _ATOM_CLASS + rb"\]%*]+")
# tag = 1*<any ASTRING-CHAR except "+">
TAG = re.compile(rb"[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+")
# quoted = DQUOTE *QUOTED-CHAR DQUOTE; QUOTED-CHAR = TEXT-CHAR except quoted-specials, or "\" quoted-specials.
_QUOTED7 = re.compile(rb'"((?:[\x01-\x09\x0b\x0c\x0e-\x21\x23-\x5b\x5d-\x7f]++|\\["\\])*+)"')
# RFC 6855 §3 / RFC 9051 §9 (UTF8-2..4 in QUOTED-CHAR): 8-bit allowed once UTF8=ACCEPT is on.
_QUOTED8 = re.compile(rb'"((?:[\x01-\x09\x0b\x0c\x0e-\x21\x23-\x5b\x5d-\xff]++|\\["\\])*+)"')
_UNESCAPE = re.compile(rb"\\([\"\\])")
LITERAL = re.compile(rb"(~?)\{(\d{1,20})(\+?)\}")
NUMBER = re.compile(rb"\d{1,20}(?!\d)")  # bounded: int() of a huge digit string is slow
_SEQ_RANGE = rb"(?:[1-9]\d{0,9}|\*)(?::(?:[1-9]\d{0,9}|\*))?"
SEQSET = re.compile(_SEQ_RANGE + rb"(?:," + _SEQ_RANGE + rb")*")
_SEQ_PART = re.compile(rb"([1-9]\d{0,9}|\*)(?::([1-9]\d{0,9}|\*))?")
_DATE = re.compile(rb'("?)(\d{1,2})-([A-Za-z]{3})-(\d{4})\1')
# date-day-fixed is (SP DIGIT) / 2DIGIT; a bare single digit ("7-Feb-1994 ...") is accepted too, as
# the reference server does, since it cannot be misread.
_DATE_TIME = re.compile(rb'"( \d|\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"')
MONTHS = {m: i for i, m in enumerate(
    [b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN", b"JUL", b"AUG", b"SEP", b"OCT", b"NOV", b"DEC"], 1)}
SYSTEM_FLAGS = {f.upper(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")}
MAX_NUMBER = 2**32 - 1  # number / nz-number (RFC 9051 §9: "unsigned 32-bit integer")
MAX_NUMBER64 = 2**63 - 1  # number64 (RFC 9051 §9, also mod-sequence-value in RFC 7162)
# RFC 9051 §5.1: names MUST NOT contain C0/C1 controls, DEL, U+2028 or U+2029.
_NAME_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_DEPTH = 64  # nesting of parenthesised search keys; bounds recursion


class Cursor:
    """A position in one command: ``text`` (lines without CRLF) and ``literals``."""

    __slots__ = ("text", "pos", "literals", "utf8", "tag", "depth", "refusal", "allow_nul")

    def __init__(self, text: bytes, literals: dict[int, tuple[bytes, bool]], utf8: bool, tag: str | None) -> None:
        self.text = text
        self.pos = 0
        self.literals = literals
        self.utf8 = utf8
        self.tag = tag
        self.depth = 0
        self.allow_nul = False  # set while reading message data (literal_any)
        # A well-formed command whose argument cannot be used (a mailbox name that is not valid
        # modified UTF-7, an unsupported charset) is answered NO, not BAD, and only once the whole
        # command has parsed: a syntax error anywhere in it still gets the BAD.
        self.refusal: ProtocolError | None = None

    # ---- basics --------------------------------------------------------------------------

    def fail(self, text: str, code: str | None = None) -> ProtocolError:
        return ProtocolError(text, self.tag, code)

    def refuse(self, text: str, code: str | None = None) -> None:
        """Remember the first reason to answer NO; parsing goes on."""
        if self.refusal is None:
            self.refusal = ProtocolError(text, self.tag, code)

    def peek(self) -> bytes:
        return self.text[self.pos:self.pos + 1]

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def end(self) -> None:
        if self.pos < len(self.text):
            raise self.fail("Unexpected characters at the end of the command")

    def sp(self) -> None:
        if self.text[self.pos:self.pos + 1] != b" ":
            raise self.fail("Expected a space" if self.pos < len(self.text) else "Missing argument")
        self.pos += 1

    def try_sp(self) -> bool:
        if self.text[self.pos:self.pos + 1] == b" ":
            self.pos += 1
            return True
        return False

    def char(self, c: bytes) -> None:
        if self.text[self.pos:self.pos + 1] != c:
            raise self.fail(f"Expected {c.decode()!r}")
        self.pos += 1

    def try_char(self, c: bytes) -> bool:
        if self.text[self.pos:self.pos + 1] == c:
            self.pos += 1
            return True
        return False

    def regex(self, pattern: re.Pattern[bytes], what: str) -> re.Match[bytes]:
        m = pattern.match(self.text, self.pos)
        if not m:
            raise self.fail(f"Expected {what}")
        self.pos = m.end()
        return m

    def atom(self) -> str:
        return self.regex(ATOM, "an atom").group().decode("ascii")

    def keyword(self) -> str:
        """An atom, upper-cased: command names, options and other case-insensitive words."""
        return self.regex(ATOM, "a keyword").group().decode("ascii").upper()

    def try_keyword(self, word: str) -> bool:
        """Consume WORD (case-insensitive) when it stands as a whole atom here."""
        m = ATOM.match(self.text, self.pos)
        if m and m.group().upper() == word.encode():
            self.pos = m.end()
            return True
        return False

    def number(self, nz: bool = False, limit: int = MAX_NUMBER) -> int:
        n = int(self.regex(NUMBER, "a number").group())
        if n > limit:
            raise self.fail("Number out of range")
        if nz and n == 0:
            raise self.fail("Expected a non-zero number")
        return n

    # ---- strings ---------------------------------------------------------------------------

    def literal(self) -> bytes:
        m = LITERAL.match(self.text, self.pos)
        if not m:
            raise self.fail("Expected a string")
        got = self.literals.get(m.end())
        if got is None:
            raise self.fail("A literal must end its line")
        self.pos = m.end()
        data, binary = got
        # literal = ... *CHAR8 (%x01-ff): NUL only in literal8 (RFC 3516 §4.2, RFC 9051 §9).  Accepted
        # anyway where it is message data (APPEND/CATENATE: old mail migrated by mbsync holds NUL, and
        # the reference server takes it); refused in every other string.
        if not binary and b"\x00" in data and not self.allow_nul:
            raise self.fail("NUL in a literal (use literal8 with BINARY)")
        return data

    def literal_any(self) -> tuple[bytes, bool]:
        """A literal or literal8 (APPEND data, CATENATE TEXT): the octets and whether it was ~{n}."""
        start = self.pos
        self.allow_nul = True
        try:
            data = self.literal()
        finally:
            self.allow_nul = False
        return data, self.text[start:start + 1] == b"~"

    def quoted(self) -> bytes:
        # RFC 9051 §9 QUOTED-CHAR includes UTF8-2/3/4: 8-bit is accepted in every quoted string
        # (as the reference does for SEARCH BODY "Grüße"); mailbox names still go through decode_mailbox.
        m = _QUOTED8.match(self.text, self.pos)
        if not m:
            raise self.fail("Bad quoted string")
        self.pos = m.end()
        s = m.group(1)
        return _UNESCAPE.sub(rb"\1", s) if b"\\" in s else s

    def string(self) -> bytes:
        c = self.text[self.pos:self.pos + 1]
        if c == b'"':
            return self.quoted()
        if c == b"{":
            return self.literal()
        raise self.fail("Expected a string")

    def astring(self) -> bytes:
        c = self.text[self.pos:self.pos + 1]
        if c == b'"':
            return self.quoted()
        if c == b"{":
            return self.literal()
        return self.regex(ASTRING_ATOM, "a string").group()

    def nstring(self) -> bytes | None:
        if self.try_keyword("NIL"):
            return None
        return self.string()

    def text_utf8(self, data: bytes, what: str) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None

    def astring_str(self, what: str = "String") -> str:
        return self.text_utf8(self.astring(), what)

    # ---- mailbox names ---------------------------------------------------------------------

    def decode_mailbox(self, raw: bytes) -> str:
        """Mailbox name octets -> str: UTF-8 after UTF8=ACCEPT / IMAP4rev2 (RFC 6855 §3), else
        modified UTF-7 (RFC 3501 §5.1.3).  INBOX in any case is "INBOX" (RFC 9051 §5.1)."""
        if len(raw) == 5 and raw.upper() == b"INBOX":
            return "INBOX"
        if self.utf8:
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.refuse("Mailbox name is not valid UTF-8")
                return raw.decode("utf-8", "replace")
        else:
            try:
                name = mutf7.decode(raw)
            except mutf7.MUTF7Error as e:
                self.refuse(f"Mailbox name is not valid modified UTF-7: {e}")
                return raw.decode("utf-8", "replace")
        if _NAME_FORBIDDEN.search(name):
            self.refuse("Mailbox name holds a control character")
        return name

    def mailbox(self) -> str:
        return self.decode_mailbox(self.astring())

    def list_mailbox(self) -> str:
        """list-mailbox = 1*list-char / string (wildcards "%" and "*" allowed)."""
        c = self.text[self.pos:self.pos + 1]
        raw = self.string() if c in (b'"', b"{") else self.regex(LIST_ATOM, "a mailbox pattern").group()
        return self.decode_mailbox(raw)

    # ---- flags, sets, dates ------------------------------------------------------------------

    def flag(self, settable: bool = False) -> str:
        """flag = system flag / "\\" atom (flag-extension) / atom (keyword); system flags normalised.

        SETTABLE (STORE, APPEND): only the five system flags a client may set.  "\\Recent" is the
        server's (RFC 3501 §2.3.2) and a flag-extension is one the server MUST NOT generate
        (RFC 3501 §9), so storing either is refused, as the reference server does.
        """
        if self.try_char(b"\\"):
            name = "\\" + self.atom()
            canonical = SYSTEM_FLAGS.get(name.upper())
            if canonical is None or settable and canonical == "\\Recent":
                if settable:
                    raise self.fail(f"Invalid system flag {name}")
                return name
            return canonical
        return self.atom()

    def flag_list(self, settable: bool = False) -> tuple[str, ...]:
        self.char(b"(")
        flags: list[str] = []
        if not self.try_char(b")"):
            flags.append(self.flag(settable))
            while self.try_sp():
                flags.append(self.flag(settable))
            self.char(b")")
        return tuple(flags)

    def sequence_set(self, allow_saved: bool = True) -> SequenceSet:
        """sequence-set (RFC 9051 §9) or "$" (RFC 5182 §2 seq-last-command)."""
        if self.text[self.pos:self.pos + 1] == b"$":
            if not allow_saved:
                raise self.fail('"$" is not allowed here')
            self.pos += 1
            return SequenceSet(saved=True)
        m = self.regex(SEQSET, "a sequence set")
        ranges = []
        for lo, hi in _SEQ_PART.findall(m.group()):
            a = STAR if lo == b"*" else int(lo)
            b = a if not hi else (STAR if hi == b"*" else int(hi))
            if (a is not None and a > MAX_NUMBER) or (b is not None and b > MAX_NUMBER):
                raise self.fail("Sequence number out of range")
            ranges.append((a, b))
        return SequenceSet(tuple(ranges))

    def date(self) -> dt.date:
        """date = date-text / DQUOTE date-text DQUOTE; date-text = 1*2DIGIT "-" month "-" 4DIGIT."""
        m = self.regex(_DATE, "a date (d-Mon-yyyy)")
        month = MONTHS.get(m.group(3).upper())
        try:
            if month is None:
                raise ValueError
            return dt.date(int(m.group(4)), month, int(m.group(2)))
        except ValueError:
            raise self.fail("No such date") from None

    def date_time(self) -> dt.datetime:
        """date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE."""
        m = self.regex(_DATE_TIME, 'a date-time ("dd-Mon-yyyy hh:mm:ss +zzzz")')
        day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
        month = MONTHS.get(mon.upper())
        try:
            if month is None or int(zm) > 59:
                raise ValueError
            offset = dt.timedelta(hours=int(zh), minutes=int(zm))
            tz = dt.timezone(-offset if sign == b"-" else offset)
            return dt.datetime(int(year), month, int(day.strip()), int(hh), int(mm), int(ss), tzinfo=tz)
        except ValueError:
            raise self.fail("No such date-time") from None

    def paren_list(self, item):  # type: ignore[no-untyped-def]
        """ "(" item *(SP item) ")" -> list; an empty "()" gives []."""
        self.char(b"(")
        out = []
        if self.try_char(b")"):
            return out
        out.append(item())
        while self.try_sp():
            out.append(item())
        self.char(b")")
        return out
