"""SEARCH evaluation (RFC 9051 §6.4.4, RFC 3501 §6.4.4, RFC 7162 §3.1.5, RFC 5182, RFC 5032).

``compile_search(key, ctx)`` turns a ``SearchKey`` tree into a ``SearchProgram`` once per
command; ``program.matches(view)`` then runs per message. Within AND/OR the cheap
metadata tests run before the content tests, so a message's file is only read when a
content key still decides. ``program.metadata_only`` tells the server that no key needs
the message content at all: it can run the search over index records alone.

Semantics, at the RFC's MUSTs:
- BEFORE/ON/SINCE compare the internal date's day, "disregarding time and timezone"
  (RFC 9051 §6.4.4), taken in ``ctx.tz`` (UTC by default, the zone INTERNALDATE is shown in);
- SENTBEFORE/SENTON/SENTSINCE compare the Date: field's own calendar date, ignoring its
  time and zone; a missing or unparsable Date: counts as 1 Jan 1970 (Dovecot's choice);
- string keys are case-insensitive substrings of decoded text (``textsearch``); an empty
  string matches every message that has the field (HEADER "" = field present, §6.4.4);
- NEW = RECENT and not \\Seen, OLD = not RECENT (RFC 3501 §6.4.4);
- "*" is the largest sequence number / UID in use, "$" is the saved result (RFC 5182 §2.1:
  no saved result means the empty set);
- MODSEQ matches messages whose mod-sequence is >= the given value (RFC 7162 §3.1.5).
"""

from __future__ import annotations

import bisect
import datetime as dt
import email.utils
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from services.access.imapmsg.textsearch import Content, fold_case
from services.access.imapproto.types import SearchKey, SequenceSet

EPOCH_DAY = dt.date(1970, 1, 1)


class MessageView(Protocol):
    """What SEARCH/SORT/THREAD see of one message. ``data()`` is called only when needed."""

    uid: int
    seq: int
    flags: tuple[str, ...]  # "\\Seen", "$Forwarded", ...
    size: int  # RFC822.SIZE
    internaldate: float  # unix time
    modseq: int
    recent: bool

    def data(self) -> bytes: ...


@dataclass(frozen=True)
class SearchContext:
    """Mailbox facts a search needs: "*" for sequence numbers and UIDs, the SEARCHRES result."""

    max_seq: int  # the largest message sequence number ("*", RFC 9051 §9 seq-number)
    max_uid: int  # the largest UID in use
    saved: frozenset[int] | tuple[int, ...] | None = None  # RFC 5182 "$" as UIDs; None: nothing saved
    tz: dt.tzinfo = dt.UTC  # the zone internal dates are taken in for BEFORE/ON/SINCE
    now: float | None = None  # for OLDER/YOUNGER (RFC 5032); None: the clock at compile time

    def __post_init__(self) -> None:
        if self.saved is not None and not isinstance(self.saved, frozenset):
            object.__setattr__(self, "saved", frozenset(self.saved))


class SearchError(ValueError):
    """A search key this evaluator does not know (the server answers BAD)."""


class _Message:
    """A view plus its lazily loaded content."""

    __slots__ = ("_content", "view")

    def __init__(self, view: MessageView) -> None:
        self.view = view
        self._content: Content | None = None

    @property
    def content(self) -> Content:
        if self._content is None:
            v = self.view
            self._content = Content(v.data, getattr(v, "headers", None))
        return self._content


Pred = Callable[[_Message], bool]
_FLAG_KEYS = {
    "ANSWERED": ("\\answered", True), "UNANSWERED": ("\\answered", False),
    "DELETED": ("\\deleted", True), "UNDELETED": ("\\deleted", False),
    "DRAFT": ("\\draft", True), "UNDRAFT": ("\\draft", False),
    "FLAGGED": ("\\flagged", True), "UNFLAGGED": ("\\flagged", False),
    "SEEN": ("\\seen", True), "UNSEEN": ("\\seen", False),
}
_ADDRESS_KEYS = {"FROM": "from", "TO": "to", "CC": "cc", "BCC": "bcc", "SUBJECT": "subject"}
_CONTENT_OPS = frozenset({"FROM", "TO", "CC", "BCC", "SUBJECT", "HEADER", "BODY", "TEXT",
                          "SENTBEFORE", "SENTON", "SENTSINCE"})


def _has_flag(v: MessageView, flag: str) -> bool:
    return any(f.lower() == flag for f in v.flags)


def sent_date(content: Content) -> dt.date:
    """The calendar date written in the Date: field, its time and zone ignored."""
    f = content.raw_header("date")
    if f is None:
        return EPOCH_DAY
    parsed = email.utils.parsedate_tz(f.value.decode("ascii", "replace").replace("\r\n", " "))
    if parsed is None:
        return EPOCH_DAY
    try:
        return dt.date(parsed[0], parsed[1], parsed[2])
    except ValueError:
        return EPOCH_DAY


class _Ranges:
    """Fast membership in a normalized sequence set."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.lows = [a for a, _ in ranges]
        self.highs = [b for _, b in ranges]

    def __contains__(self, n: int) -> bool:
        i = bisect.bisect_right(self.lows, n) - 1
        return i >= 0 and n <= self.highs[i]


class SearchProgram:
    """A compiled search key. ``metadata_only``: no key reads headers or body, so index
    records are enough (the server need not have message files at hand)."""

    def __init__(self, key: SearchKey, ctx: SearchContext | None = None) -> None:
        self.key = key
        self.metadata_only = not needs_content(key)
        self._ctx: SearchContext | None = None
        self._pred: Pred = lambda m: False
        if ctx is not None:
            self._bind(ctx)

    def _bind(self, ctx: SearchContext) -> Pred:
        if ctx != self._ctx:
            now = ctx.now if ctx.now is not None else time.time()
            self._pred = _compile(self.key, ctx, now)
            self._ctx = ctx
        return self._pred

    def matches(self, view: MessageView, ctx: SearchContext | None = None) -> bool:
        """Whether VIEW matches; CTX is needed once (the first call) and whenever it changes."""
        if ctx is not None:
            pred = self._bind(ctx)
        elif self._ctx is None:
            raise ValueError("a SearchContext is needed to evaluate a search")
        else:
            pred = self._pred
        return pred(_Message(view))


def _cost(key: SearchKey) -> int:
    """Rough evaluation cost: metadata 0, headers 1, body 2 (cheap tests go first)."""
    if key.op in ("BODY", "TEXT"):
        return 2
    if key.op in _CONTENT_OPS:
        return 1
    if key.op in ("NOT", "OR", "AND"):
        return max((_cost(k) for k in key.args if isinstance(k, SearchKey)), default=0)
    return 0


def needs_content(key: SearchKey) -> bool:
    if key.op in _CONTENT_OPS:
        return True
    return any(isinstance(k, SearchKey) and needs_content(k) for k in key.args)


def _string_pred(field: str, needle: str) -> Pred:
    n = fold_case(needle)

    def pred(m: _Message) -> bool:
        values = m.content.header(field)
        return values is not None and any(n in v for v in values)

    return pred


def _body_pred(needle: str, with_headers: bool) -> Pred:
    n = fold_case(needle)

    def pred(m: _Message) -> bool:
        c = m.content
        if with_headers and n in c.all_headers():
            return True
        return any(n in t for t in c.body())

    return pred


def _set_pred(s: SequenceSet, ctx: SearchContext, by_uid: bool) -> Pred:
    if s.saved:
        saved = ctx.saved or frozenset()
        return lambda m: m.view.uid in saved
    ranges = _Ranges(s.normalized(ctx.max_uid if by_uid else ctx.max_seq))
    if by_uid:
        return lambda m: m.view.uid in ranges
    return lambda m: m.view.seq in ranges


def _day_pred(op: str, day: dt.date, get: Callable[[_Message], dt.date]) -> Pred:
    if op.endswith("BEFORE"):
        return lambda m: get(m) < day
    if op.endswith("ON"):
        return lambda m: get(m) == day
    return lambda m: get(m) >= day  # SINCE: "within or later than the specified date"


def _compile(key: SearchKey, ctx: SearchContext, now: float) -> Pred:
    op, a = key.op.upper(), key.args
    if op == "ALL":
        return lambda m: True
    if op in _FLAG_KEYS:
        flag, want = _FLAG_KEYS[op]
        return lambda m: _has_flag(m.view, flag) == want
    if op in ("KEYWORD", "UNKEYWORD"):
        kw, want = str(a[0]).lower(), op == "KEYWORD"
        return lambda m: _has_flag(m.view, kw) == want
    if op == "RECENT":
        return lambda m: m.view.recent
    if op == "OLD":
        return lambda m: not m.view.recent
    if op == "NEW":
        return lambda m: m.view.recent and not _has_flag(m.view, "\\seen")
    if op in ("LARGER", "SMALLER"):
        n = int(a[0])
        return (lambda m: m.view.size > n) if op == "LARGER" else (lambda m: m.view.size < n)
    if op in ("BEFORE", "ON", "SINCE"):
        tz = ctx.tz
        return _day_pred(op, a[0], lambda m: dt.datetime.fromtimestamp(m.view.internaldate, tz).date())
    if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        return _day_pred(op, a[0], lambda m: sent_date(m.content))
    if op in ("OLDER", "YOUNGER"):
        limit = now - int(a[0])
        if op == "OLDER":
            return lambda m: m.view.internaldate <= limit
        return lambda m: m.view.internaldate >= limit
    if op == "SEQSET":
        return _set_pred(a[0], ctx, by_uid=False)
    if op == "UID":
        return _set_pred(a[0], ctx, by_uid=True)
    if op == "MODSEQ":
        floor = int(a[0])
        return lambda m: m.view.modseq >= floor
    if op in _ADDRESS_KEYS:
        return _string_pred(_ADDRESS_KEYS[op], str(a[0]))
    if op == "HEADER":
        return _string_pred(str(a[0]), str(a[1]))
    if op in ("BODY", "TEXT"):
        return _body_pred(str(a[0]), op == "TEXT")
    if op == "NOT":
        inner = _compile(a[0], ctx, now)
        return lambda m: not inner(m)
    if op in ("OR", "AND"):
        kids = sorted(a, key=_cost)
        preds = [_compile(k, ctx, now) for k in kids]
        if op == "OR":
            return lambda m: any(p(m) for p in preds)
        if len(preds) == 1:
            return preds[0]
        return lambda m: all(p(m) for p in preds)
    raise SearchError(f"unknown search key {key.op}")


def compile_search(key: SearchKey, ctx: SearchContext | None = None) -> SearchProgram:
    """Compile KEY once for a whole SEARCH; the context may come now or with ``matches``."""
    return SearchProgram(key, ctx)


def _uses_clock(key: SearchKey) -> bool:
    return key.op in ("OLDER", "YOUNGER") or any(isinstance(k, SearchKey) and _uses_clock(k) for k in key.args)


@functools.lru_cache(maxsize=32)
def _cached_compile(key: SearchKey, ctx: SearchContext) -> SearchProgram:
    return SearchProgram(key, ctx)


def matches(key: SearchKey, view: MessageView, ctx: SearchContext) -> bool:
    """Whether VIEW satisfies KEY. Programs are cached per (key, context) unless they read the
    clock; a server searching many messages should call ``compile_search`` once instead."""
    if ctx.now is None and _uses_clock(key):
        return SearchProgram(key, ctx).matches(view)
    return _cached_compile(key, ctx).matches(view)

