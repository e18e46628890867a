"""Typed IMAP commands (RFC 3501, RFC 9051 and the extensions the box speaks). No I/O, no storage.

The parser (``parser.py``) turns bytes into these; the session (``services/access/imap/``)
executes them; the serializer (``wire.py``) writes responses. Names follow the RFC grammar
so a reader can find each field in the ABNF.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

STAR = None  # "*" in a sequence set: the largest number in use (RFC 9051 §9 seq-number)


class ProtocolError(ValueError):
    """Input that does not match the grammar. ``tag`` is None when no tag could be read.

    The session answers ``<tag> BAD <text>`` (or ``* BAD`` without a tag); never a traceback.
    """

    def __init__(self, text: str, tag: str | None = None, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.tag = tag
        self.code = code


@dataclass(frozen=True)
class SequenceSet:
    """A sequence-set or uid-set. Each range is (low, high) with None standing for "*".

    ``saved`` is RFC 5182's "$" (SEARCHRES): the session substitutes its saved result.
    """

    ranges: tuple[tuple[int | None, int | None], ...] = ()
    saved: bool = False

    def normalized(self, largest: int) -> list[tuple[int, int]]:
        """Ranges with "*" replaced by LARGEST, each low <= high, sorted and merged.

        RFC 9051 §9: "*" is the largest number in use; a range "a:b" is the same as "b:a".
        With LARGEST == 0 (empty mailbox), "*" is 0 and ranges that only hold 0 vanish.
        """
        out: list[tuple[int, int]] = []
        for lo, hi in self.ranges:
            a = largest if lo is None else lo
            b = largest if hi is None else hi
            if a > b:
                a, b = b, a
            if b <= 0:
                continue
            out.append((max(a, 1), b))
        out.sort()
        merged: list[tuple[int, int]] = []
        for a, b in out:
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        return merged

    def contains(self, n: int, largest: int) -> bool:
        return any(a <= n <= b for a, b in self.normalized(largest))


@dataclass(frozen=True)
class Section:
    """A body section spec: BODY[<part>.<text> (<fields>)] (RFC 9051 §6.4.5)."""

    part: tuple[int, ...] = ()  # 1.2.3; () is the whole message
    text: Literal["HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"] | None = None
    fields: tuple[str, ...] = ()  # header field names for HEADER.FIELDS[.NOT], as the client sent them


@dataclass(frozen=True)
class FetchAtt:
    """One fetch attribute. Macros (ALL, FAST, FULL) are expanded by the parser.

    name is one of: UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY BODYSTRUCTURE
    RFC822 RFC822.HEADER RFC822.TEXT MODSEQ (RFC 7162) SAVEDATE (RFC 8514 not advertised)
    and, with a section: "BODY" (BODY[...] / BODY.PEEK[...]), "BINARY" / "BINARY.SIZE" (RFC 3516).
    ``section`` is None for the plain attributes and for BODY without brackets.
    """

    name: str
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None  # <origin.octets>


@dataclass(frozen=True)
class SearchKey:
    """A node of a search program (RFC 9051 §6.4.4, RFC 3501 §6.4.4, RFC 7162 §3.1.5).

    op / args:
      ALL ANSWERED DELETED DRAFT FLAGGED SEEN UNANSWERED UNDELETED UNDRAFT UNFLAGGED UNSEEN
      NEW OLD RECENT (IMAP4rev1)                                    args ()
      KEYWORD UNKEYWORD                                             (flag: str,)
      BCC CC FROM TO SUBJECT BODY TEXT                              (string: str,)
      HEADER                                                        (field_name: str, string: str)
      BEFORE ON SINCE SENTBEFORE SENTON SENTSINCE                   (date: datetime.date,)
      LARGER SMALLER                                                (n: int,)
      SEQSET                                                        (SequenceSet,)  message numbers
      UID                                                           (SequenceSet,)
      MODSEQ                                                        (modseq: int, entry: str|None, type: str|None)
      OLDER YOUNGER (RFC 5032, not advertised)                      (seconds: int,)
      NOT                                                           (SearchKey,)
      OR                                                            (SearchKey, SearchKey)
      AND                                                           (SearchKey, ...)   a parenthesised list
                                                                    or the top-level implicit AND
    Strings are already decoded from the wire (the charset given in SEARCH CHARSET is applied
    by the parser; default UTF-8 / US-ASCII).
    """

    op: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class QresyncParams:
    """SELECT/EXAMINE (QRESYNC (uidvalidity modseq [known-uids [(seq-match uid-match)]])) RFC 7162 §3.2.5."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True)
class CatenatePart:
    """RFC 4469: ("TEXT", literal bytes) or ("URL", imap url str)."""

    kind: Literal["TEXT", "URL"]
    value: bytes | str


@dataclass(frozen=True)
class AppendMessage:
    flags: tuple[str, ...] = ()
    date: dt.datetime | None = None  # aware datetime (date-time in the command)
    data: bytes | None = None  # the literal (or literal8 with BINARY, RFC 3516 §4.4)
    binary: bool = False  # sent as literal8 "~{n}"
    catenate: tuple[CatenatePart, ...] | None = None  # CATENATE (...) instead of a literal
    utf8: bool = False  # RFC 6855 §4 "UTF8 (~{n})": an RFC 6532 message (binary stays False)


# ---- command argument types -------------------------------------------------------------

@dataclass(frozen=True)
class NoArgs:
    """CAPABILITY NOOP LOGOUT STARTTLS CHECK CLOSE UNSELECT IDLE NAMESPACE; plain EXPUNGE."""


@dataclass(frozen=True)
class Login:
    user: str
    password: str


@dataclass(frozen=True)
class Authenticate:
    mechanism: str  # upper-cased
    initial: bytes | None = None  # RFC 4959 SASL-IR initial response, decoded from base64; b"" for "="


@dataclass(frozen=True)
class Enable:
    capabilities: tuple[str, ...]  # upper-cased


@dataclass(frozen=True)
class Id:
    params: tuple[tuple[str, str | None], ...] | None  # None is NIL (RFC 2971)


@dataclass(frozen=True)
class Compress:
    mechanism: str  # upper-cased; DEFLATE is the only one (RFC 4978)


@dataclass(frozen=True)
class MailboxArg:
    """SELECT EXAMINE DELETE SUBSCRIBE UNSUBSCRIBE GETQUOTAROOT: one mailbox name (decoded)."""

    mailbox: str


@dataclass(frozen=True)
class Select:
    mailbox: str
    readonly: bool  # EXAMINE
    condstore: bool = False  # (CONDSTORE) parameter, RFC 7162 §3.1.8
    qresync: QresyncParams | None = None


@dataclass(frozen=True)
class Create:
    mailbox: str
    special_use: tuple[str, ...] = ()  # CREATE name (USE (\Sent)) RFC 6154 §3


@dataclass(frozen=True)
class Rename:
    old: str
    new: str


@dataclass(frozen=True)
class ListCmd:
    """LIST and LSUB, with RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS, RFC 6154 SPECIAL-USE.

    select_opts: SUBSCRIBED REMOTE RECURSIVEMATCH SPECIAL-USE (upper-cased).
    return_opts: SUBSCRIBED CHILDREN SPECIAL-USE STATUS; status_items for RETURN (STATUS (...)).
    patterns: one or more (a parenthesised list with LIST-EXTENDED); mailbox patterns decoded.
    """

    reference: str
    patterns: tuple[str, ...]
    lsub: bool = False
    select_opts: frozenset[str] = frozenset()
    return_opts: frozenset[str] = frozenset()
    status_items: tuple[str, ...] = ()
    extended: bool = False  # the client used LIST-EXTENDED syntax (changes the response rules)


@dataclass(frozen=True)
class Status:
    mailbox: str
    items: tuple[str, ...]  # MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE HIGHESTMODSEQ APPENDLIMIT


@dataclass(frozen=True)
class Append:
    mailbox: str
    messages: tuple[AppendMessage, ...]  # more than one with MULTIAPPEND (RFC 3502)


@dataclass(frozen=True)
class Fetch:
    sequence: SequenceSet
    atts: tuple[FetchAtt, ...]
    changedsince: int | None = None  # RFC 7162 §3.1.4.1
    vanished: bool = False  # RFC 7162 §3.2.6 (UID FETCH only)


@dataclass(frozen=True)
class Store:
    sequence: SequenceSet
    action: Literal["set", "add", "remove"]  # FLAGS / +FLAGS / -FLAGS
    silent: bool
    flags: tuple[str, ...]
    unchangedsince: int | None = None  # RFC 7162 §3.1.3


@dataclass(frozen=True)
class Search:
    key: SearchKey  # op "AND" at the top
    charset: str | None = None
    # RFC 4731 ESEARCH RETURN options (MIN MAX ALL COUNT SAVE); None: plain SEARCH response.
    # "RETURN ()" is given as ("ALL",) per RFC 4731 §3.1.
    ret: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Sort:
    """RFC 5256 SORT; criteria are (key, reverse) with key in ARRIVAL CC DATE FROM SIZE SUBJECT TO
    (and DISPLAYFROM DISPLAYTO, RFC 5957, only if advertised)."""

    criteria: tuple[tuple[str, bool], ...]
    charset: str
    key: SearchKey
    ret: tuple[str, ...] | None = None  # ESORT (RFC 5267), only if advertised


@dataclass(frozen=True)
class Thread:
    algorithm: str  # REFERENCES or ORDEREDSUBJECT
    charset: str
    key: SearchKey


@dataclass(frozen=True)
class CopyMove:
    """COPY and MOVE (RFC 6851)."""

    sequence: SequenceSet
    mailbox: str


@dataclass(frozen=True)
class UidExpunge:
    sequence: SequenceSet  # RFC 4315 §2.1


@dataclass(frozen=True)
class GetQuota:
    root: str


@dataclass(frozen=True)
class SetQuota:
    root: str
    limits: tuple[tuple[str, int], ...]  # (resource upper-cased, limit)


@dataclass(frozen=True)
class UidSendmail:
    """UID SENDMAIL uid [(FROM addr RECIPIENT addr ...)] (draft-kundrat-imap-submit)."""

    uid: int
    sender: str | None = None
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class Command:
    """One complete command.

    name is upper-cased (e.g. "FETCH"); ``uid`` is True for the UID form (UID FETCH/STORE/
    SEARCH/SORT/THREAD/COPY/MOVE/EXPUNGE/SENDMAIL), with ``name`` the inner command.
    ``args`` is one of the argument dataclasses above.
    """

    tag: str
    name: str
    args: Any = field(default_factory=NoArgs)
    uid: bool = False
