"""SORT (RFC 5256 §3) and the base subject (RFC 5256 §2.1), shared with THREAD.

Sort keys: ARRIVAL (internal date), CC / FROM / TO (addr-mailbox of the first address),
DATE (the Date: field, in UTC; the internal date when it is missing or unparsable),
SIZE (RFC822.SIZE), SUBJECT (base subject). REVERSE inverts the key after it. Strings are
compared with i;unicode-casemap (RFC 5051). Messages equal on every key keep mailbox order
("sorted according to the order in which they appear in the mailbox", RFC 5256 §3).
"""

from __future__ import annotations

import email.utils
import functools
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

from services.access.imapmsg import mimetree
from services.access.imapmsg.envelope import parse_addresses
from services.access.imapmsg.search import MessageView
from services.access.imapmsg.textsearch import decode_words, to_text, unfold

# RFC 5256 §5 ABNF pieces used by §2.1.
_WSP = " \t"
_TRAILER = re.compile(r"(?:\(fwd\)|[ \t])$", re.IGNORECASE)
_BLOB = r"\[[^\[\]]*\][ \t]*"
_REFWD = re.compile(r"(?:re|fwd?)[ \t]*(?:" + _BLOB + r")?:", re.IGNORECASE)
_LEADER_BLOBS = re.compile(r"(?:" + _BLOB + r")*")
_BLOB_RE = re.compile(_BLOB)
_SPACES = re.compile(r"[ \t\r\n]+")


def casemap(s: str) -> str:
    """i;unicode-casemap (RFC 5051 §2.1): simple titlecase of each character, then NFKD."""
    if s.isascii():
        return s.upper()  # the simple titlecase of every ASCII letter is its upper case
    out = []
    for c in s:
        t = c.title()
        out.append(t if len(t) == 1 else c)
    return unicodedata.normalize("NFKD", "".join(out))


def _strip_leader(s: str) -> tuple[str, bool]:
    """RFC 5256 §2.1 step 3: subj-leader = (*subj-blob subj-refwd) / WSP, repeatedly."""
    refwd = False
    while True:
        if s[:1] and s[0] in _WSP:
            s = s[1:]
            continue
        m = _LEADER_BLOBS.match(s)
        end = m.end() if m else 0
        r = _REFWD.match(s, end)
        if r is None:
            return s, refwd
        s = s[r.end() :]
        refwd = True


def base_subject(subject: str) -> tuple[str, bool]:
    """(base subject, whether it was a reply or forward) per RFC 5256 §2.1 steps 1-6.

    SUBJECT is the raw field value (encoded words are decoded here, step 1).
    """
    # (1) decode, and make every run of whitespace one space
    s = _SPACES.sub(" ", decode_words(subject))
    is_reply = False
    while True:
        # (2) remove subj-trailer ("(fwd)" / WSP) repeatedly
        while True:
            m = _TRAILER.search(s)
            if m is None:
                break
            if m.group(0).lower() == "(fwd)":
                is_reply = True
            s = s[: m.start()]
        # (3)-(5) remove subj-leader and a leading subj-blob (if something is left), repeatedly
        while True:
            s, refwd = _strip_leader(s)
            is_reply = is_reply or refwd
            b = _BLOB_RE.match(s)
            if b is not None and s[b.end() :].strip(_WSP):
                s = s[b.end() :]
                continue
            break
        # (6) "[fwd:" ... "]" wrapper: remove and start again from (2)
        if s[:5].lower() == "[fwd:" and s.endswith("]"):
            s = s[5:-1]
            is_reply = True
            continue
        return s, is_reply


class SortInfo:
    """The header facts SORT and THREAD need from one message, each read once when first used."""

    def __init__(self, view: MessageView) -> None:
        self.view = view

    @functools.cached_property
    def fields(self) -> mimetree.Part:
        """The top-level header; ARRIVAL and SIZE never need it, so it is read on first use."""
        head = getattr(self.view, "headers", None)
        return mimetree.parse_header_only(mimetree.crlf(head() if head is not None else self.view.data()))

    @functools.cached_property
    def _subject(self) -> tuple[str, bool]:
        # The first Subject:/Date: field, as Dovecot's SORT and THREAD read them.
        subj = self.fields.first("subject")
        return base_subject(to_text(unfold(subj.value)) if subj is not None else "")

    @property
    def base(self) -> str:
        return self._subject[0]

    @property
    def is_reply(self) -> bool:
        return self._subject[1]

    @functools.cached_property
    def subject_key(self) -> str:
        return casemap(self.base)

    @functools.cached_property
    def date(self) -> float:
        return sent_timestamp(self.fields, self.view.internaldate)

    def first_mailbox(self, field: str) -> str:
        f = self.fields.first(field)
        if f is None:
            return ""
        # RFC 5256 §3: the addr-mailbox of the first address; for a group that is the group
        # name (its start marker's mailbox field, RFC 9051 §7.5.2), as Dovecot sorts it.
        for a in parse_addresses(mimetree.field_value(f)):
            return casemap(a.mailbox or "")
        return ""


def sent_timestamp(top: mimetree.Part, fallback: float) -> float:
    """The Date: field as UTC seconds (RFC 5256 §3 DATE); FALLBACK (internal date) if unusable."""
    f = top.first("date")
    if f is None:
        return fallback
    parsed = email.utils.parsedate_tz(to_text(unfold(f.value)))
    if parsed is None:
        return fallback
    try:
        return float(email.utils.mktime_tz(parsed))
    except (OverflowError, ValueError):
        return fallback


_KEYS: dict[str, Callable[[SortInfo], Any]] = {
    "ARRIVAL": lambda i: i.view.internaldate,
    "CC": lambda i: i.first_mailbox("cc"),
    "DATE": lambda i: i.date,
    "FROM": lambda i: i.first_mailbox("from"),
    "SIZE": lambda i: i.view.size,
    "SUBJECT": lambda i: i.subject_key,
    "TO": lambda i: i.first_mailbox("to"),
}


def sort(views: Sequence[MessageView], criteria: Sequence[tuple[str, bool]]) -> list[int]:
    """UIDs of VIEWS in SORT order. CRITERIA: (key, reverse) pairs, e.g. (("DATE", True),)."""
    for key, _ in criteria:
        if key.upper() not in _KEYS:
            raise ValueError(f"unknown sort key {key}")
    infos = sorted((SortInfo(v) for v in views), key=lambda i: i.view.seq)
    # Stable sorts from the last criterion to the first give the lexicographic order, and
    # ties stay in mailbox order even under REVERSE (Python's reverse sort is stable too).
    for key, rev in reversed(criteria):
        infos.sort(key=_KEYS[key.upper()], reverse=rev)
    return [i.view.uid for i in infos]
