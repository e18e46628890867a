"""IMAP SEARCH keys (RFC 3501 6.4.4) evaluated over the mail store.

Twisted's own matcher compares bytes with str, never matches KEYWORD and only
searches bodies for TEXT, so the keys are evaluated here. Messages are read
only when a key needs their content.
"""

from __future__ import annotations

import datetime as dt
import email.header
import email.utils
from typing import Any

from twisted.mail.imap4 import parseIdList

from appliance.mailstore import Folder, MailstoreError
from services.access.mime import ParsedMessage, split_header, text_parts


class SearchError(ValueError):
    """A malformed search program (answered BAD)."""


_FLAG_KEYS = {
    b"ANSWERED": ("R", True), b"UNANSWERED": ("R", False),
    b"DELETED": ("T", True), b"UNDELETED": ("T", False),
    b"DRAFT": ("D", True), b"UNDRAFT": ("D", False),
    b"FLAGGED": ("F", True), b"UNFLAGGED": ("F", False),
    b"SEEN": ("S", True), b"UNSEEN": ("S", False),
}
_STRING_HEADERS = {b"BCC": "bcc", b"CC": "cc", b"FROM": "from", b"SUBJECT": "subject", b"TO": "to"}


def _date(token: Any) -> dt.date:
    try:
        return dt.datetime.strptime(token.decode("ascii"), "%d-%b-%Y").date()
    except (AttributeError, ValueError, UnicodeDecodeError):
        raise SearchError(f"invalid date {token!r}") from None


def _text(token: Any) -> str:
    if not isinstance(token, bytes):
        raise SearchError("expected a string")
    return token.decode("utf-8", "replace").lower()


def _decoded(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


class Candidate:
    def __init__(self, folder: Folder, seq: int, uid: int, recent: bool) -> None:
        self.folder, self.seq, self.uid, self.recent = folder, seq, uid, recent
        self.entry = folder.entries[uid]
        self._data: bytes | None = None
        self._parsed: ParsedMessage | None = None

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = self.folder.read(self.uid)
        return self._data

    def header(self, name: str) -> str:
        if self._parsed is None:
            self._parsed = ParsedMessage(split_header(self.data)[0])
        values = self._parsed.msg.get_all(name) or []
        return "\n".join(_decoded(str(v)) for v in values)

    def texts(self) -> list[str]:
        """Decoded text of the body parts (MIME headers and transfer encodings excluded)."""
        return text_parts(self.data)

    def internal_day(self) -> dt.date:
        return dt.date.fromtimestamp(self.folder.internal_date(self.uid))

    def sent_day(self) -> dt.date | None:
        parsed = email.utils.parsedate_tz(self.header("date"))
        if parsed is None:
            return None
        return dt.datetime.fromtimestamp(email.utils.mktime_tz(parsed), dt.UTC).date()


class Program:
    """A parsed search program; ``matches`` consumes no state, so one Program serves every message."""

    def __init__(self, tokens: list[Any], last_seq: int, last_uid: int) -> None:
        self.tokens = tokens
        self.last_seq, self.last_uid = last_seq, last_uid

    def matches(self, c: Candidate) -> bool:
        q = list(self.tokens)
        while q:
            if not self._one(q, c):
                return False
        return True

    def _one(self, q: list[Any], c: Candidate) -> bool:
        if not q:
            raise SearchError("missing search key")
        tok = q.pop(0)
        if isinstance(tok, list):
            sub = list(tok)
            ok = True
            while sub:
                ok = self._one(sub, c) and ok
            return ok
        key = tok.upper()
        if key[:1].isdigit() or key[:1] == b"*":
            return c.seq in parseIdList(key, self.last_seq)
        if key == b"ALL":
            return True
        if key in _FLAG_KEYS:
            letter, wanted = _FLAG_KEYS[key]
            return (letter in c.entry.letters) == wanted
        if key in (b"KEYWORD", b"UNKEYWORD"):
            kw = _text(q.pop(0)) if q else ""
            has = kw in {k.lower() for k in c.entry.keywords} or (kw == "$forwarded" and "P" in c.entry.letters)
            return has == (key == b"KEYWORD")
        if key == b"RECENT":
            return c.recent
        if key == b"OLD":
            return not c.recent
        if key == b"NEW":
            return c.recent and "S" not in c.entry.letters
        if key == b"NOT":
            return not self._one(q, c)
        if key == b"OR":
            a = self._one(q, c)
            b = self._one(q, c)
            return a or b
        if key == b"UID":
            if not q:
                raise SearchError("UID needs a set")
            return c.uid in parseIdList(q.pop(0), self.last_uid)
        if key in (b"LARGER", b"SMALLER"):
            try:
                n = int(q.pop(0))
            except (IndexError, ValueError):
                raise SearchError(f"{key.decode()} needs a number") from None
            return c.entry.size > n if key == b"LARGER" else c.entry.size < n
        if key in (b"BEFORE", b"ON", b"SINCE"):
            day, when = c.internal_day(), _date(q.pop(0) if q else None)
            return day < when if key == b"BEFORE" else day == when if key == b"ON" else day >= when
        if key in (b"SENTBEFORE", b"SENTON", b"SENTSINCE"):
            when = _date(q.pop(0) if q else None)
            sent = c.sent_day()
            if sent is None:
                return False
            return sent < when if key == b"SENTBEFORE" else sent == when if key == b"SENTON" else sent >= when
        if key in _STRING_HEADERS:
            return _text(q.pop(0) if q else None) in c.header(_STRING_HEADERS[key]).lower()
        if key == b"HEADER":
            if len(q) < 2:
                raise SearchError("HEADER needs a field name and a string")
            name, value = _text(q.pop(0)), _text(q.pop(0))
            return bool(c.header(name)) and value in c.header(name).lower() if value else bool(c.header(name))
        if key == b"BODY":
            needle = _text(q.pop(0) if q else None)
            return any(needle in t.lower() for t in c.texts())
        if key == b"TEXT":
            needle = _text(q.pop(0) if q else None)
            head = split_header(c.data)[0].decode("utf-8", "replace").lower()
            return needle in head or any(needle in t.lower() for t in c.texts())
        raise SearchError(f"unknown search key {key.decode('ascii', 'replace')}")


def search(folder: Folder, uids: list[int], recent: set[int], tokens: list[Any], by_uid: bool) -> list[int]:
    """Sequence numbers (or UIDs when BY_UID) of the messages in UIDS that match TOKENS."""
    program = Program(tokens, len(uids), uids[-1] if uids else 0)
    out = []
    for seq, uid in enumerate(uids, 1):
        if uid not in folder.entries:
            continue
        try:
            hit = program.matches(Candidate(folder, seq, uid, uid in recent))
        except MailstoreError:
            continue  # expunged by another session meanwhile
        if hit:
            out.append(uid if by_uid else seq)
    return out
