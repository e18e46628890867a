"""FETCH, SEARCH, SORT and THREAD grammars (RFC 9051 §9, RFC 3501 §9, RFC 3516 BINARY,
RFC 7162 CONDSTORE/QRESYNC, RFC 4731 ESEARCH, RFC 5182 SEARCHRES, RFC 5256 SORT/THREAD)."""

from __future__ import annotations

import re

from .cursor import MAX_DEPTH, MAX_NUMBER64, Cursor
from .types import Fetch, FetchAtt, ProtocolError, Search, SearchKey, Section, Sort, Thread

_ATT_NAME = re.compile(rb"[A-Za-z0-9.]+")
_PART = re.compile(rb"[1-9]\d{0,9}(?:\.[1-9]\d{0,9})*")
_SECTION_TEXT = re.compile(rb"[A-Za-z.]+")
_SIMPLE_ATTS = frozenset({"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE",
                          "RFC822.TEXT", "BODYSTRUCTURE", "UID", "MODSEQ", "SAVEDATE"})
# RFC 9051 §6.4.5 macros
_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_MACRO_ATTS = {k: tuple(FetchAtt(n) for n in v) for k, v in _MACROS.items()}
SUPPORTED_CHARSETS = ("US-ASCII", "UTF-8")
_RETURN_OPTS = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})
_SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"})
_THREAD_ALGS = frozenset({"REFERENCES", "ORDEREDSUBJECT"})

_NO_ARG_KEYS = frozenset({"ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "SEEN", "UNANSWERED", "UNDELETED",
                          "UNDRAFT", "UNFLAGGED", "UNSEEN", "NEW", "OLD", "RECENT"})
_STRING_KEYS = frozenset({"BCC", "CC", "FROM", "TO", "SUBJECT", "BODY", "TEXT"})
_DATE_KEYS = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"})
# entry-flag-name = DQUOTE "/flags/" attr-flag DQUOTE; attr-flag = "\\" atom / keyword (the quoted
# string escapes the backslash on the wire: "/flags/\\draft").
_ENTRY_NAME = re.compile(rb"/flags/(\\?[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+)\Z")
_ENTRY_TYPES = frozenset({"PRIV", "SHARED", "ALL"})


# ---- FETCH -------------------------------------------------------------------------------

def fetch(c: Cursor, uid: bool) -> Fetch:
    """FETCH SP sequence-set SP ("ALL" / "FULL" / "FAST" / fetch-att / "(" fetch-att *(SP fetch-att) ")")
    [fetch-modifiers] (RFC 9051 §9; RFC 7162 §3.1.4 CHANGEDSINCE, §3.2.6 VANISHED)."""
    c.sp()
    seq = c.sequence_set()
    c.sp()
    if c.peek() == b"(":
        atts = tuple(c.paren_list(lambda: _fetch_att(c)))
        if not atts:
            raise c.fail("FETCH needs at least one item")
    else:
        m = _ATT_NAME.match(c.text, c.pos)
        macro = _MACRO_ATTS.get(m.group().upper().decode()) if m else None
        if macro is not None and c.text[m.end():m.end() + 1] in (b"", b" "):  # type: ignore[union-attr]
            c.pos = m.end()  # type: ignore[union-attr]
            atts = macro
        else:
            atts = (_fetch_att(c),)
    changedsince = None
    vanished = False
    if c.try_sp():
        c.char(b"(")
        while True:
            mod = c.keyword()
            if mod == "CHANGEDSINCE" and changedsince is None:
                c.sp()
                changedsince = c.number(limit=MAX_NUMBER64)
            elif mod == "VANISHED" and not vanished:
                vanished = True
            else:
                raise c.fail(f"Unknown or repeated FETCH modifier {mod}")
            if not c.try_sp():
                break
        c.char(b")")
        # RFC 7162 §3.2.6: VANISHED only in UID FETCH, and only with CHANGEDSINCE; else BAD.
        if vanished and (not uid or changedsince is None):
            raise c.fail("VANISHED needs UID FETCH with CHANGEDSINCE")
    return Fetch(seq, atts, changedsince, vanished)


def _fetch_att(c: Cursor) -> FetchAtt:
    name = c.regex(_ATT_NAME, "a FETCH item").group().upper().decode("ascii")
    bracket = c.peek() == b"["
    if name in _SIMPLE_ATTS and not bracket:
        return FetchAtt(name)
    if name == "BODY" and not bracket:
        return FetchAtt("BODY")
    if name in ("BODY", "BODY.PEEK") and bracket:
        section = _section(c)
        return FetchAtt("BODY", section, name == "BODY.PEEK", _partial(c))
    if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE") and bracket:
        # section-binary = "[" [section-part] "]" (RFC 3516 §4.2 / RFC 9051 §9)
        c.char(b"[")
        part: tuple[int, ...] = ()
        if c.peek() != b"]":
            part = _part_numbers(c.regex(_PART, "a section part").group())
        c.char(b"]")
        if name == "BINARY.SIZE":
            return FetchAtt("BINARY.SIZE", Section(part))
        return FetchAtt("BINARY", Section(part), name == "BINARY.PEEK", _partial(c))
    raise c.fail(f"Unknown FETCH item {name}")


def _part_numbers(raw: bytes) -> tuple[int, ...]:
    return tuple(int(p) for p in raw.split(b"."))


def _section(c: Cursor) -> Section:
    """section = "[" [section-spec] "]" (RFC 9051 §9)."""
    c.char(b"[")
    if c.try_char(b"]"):
        return Section()
    part: tuple[int, ...] = ()
    m = _PART.match(c.text, c.pos)
    if m:
        c.pos = m.end()
        part = _part_numbers(m.group())
        if c.try_char(b"]"):
            return Section(part)
        c.char(b".")
    text = c.regex(_SECTION_TEXT, "a section text").group().upper().decode("ascii")
    fields: tuple[str, ...] = ()
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        c.sp()
        names = c.paren_list(lambda: c.astring_str("Header field name"))
        if not names:
            raise c.fail("HEADER.FIELDS needs at least one field name")
        fields = tuple(names)
    elif text == "MIME":
        if not part:  # section-text "MIME" only after a section-part
            raise c.fail("MIME needs a part number")
    elif text not in ("HEADER", "TEXT"):
        raise c.fail(f"Unknown section {text}")
    c.char(b"]")
    return Section(part, text, fields)  # type: ignore[arg-type]


def _partial(c: Cursor) -> tuple[int, int] | None:
    """partial = "<" number64 "." nz-number64 ">" (RFC 9051 §9)."""
    if not c.try_char(b"<"):
        return None
    origin = c.number(limit=MAX_NUMBER64)
    c.char(b".")
    octets = c.number(nz=True, limit=MAX_NUMBER64)
    c.char(b">")
    return origin, octets


# ---- SEARCH ----------------------------------------------------------------------------

def _return_opts(c: Cursor) -> tuple[str, ...]:
    """search-return-opts = SP "RETURN" SP "(" [search-return-opt *(SP search-return-opt)] ")"."""
    c.sp()
    opts = c.paren_list(c.keyword)
    for o in opts:
        if o not in _RETURN_OPTS:
            raise c.fail(f"Unknown RETURN option {o}")
    # RFC 4731 §3.1: "RETURN ()" is the same as "RETURN (ALL)".
    return tuple(dict.fromkeys(opts)) or ("ALL",)


def _charset(c: Cursor) -> str:
    """charset = atom / quoted (RFC 9051 §9; RFC 3501's SEARCH takes an astring, so a literal too);
    only US-ASCII and UTF-8 (RFC 9051 §6.4.4: others -> NO [BADCHARSET])."""
    raw = c.astring()
    name = raw.decode("ascii", "replace").upper()
    if name not in SUPPORTED_CHARSETS:
        c.refuse(f"Unsupported charset {name}", "BADCHARSET")
    return name


def search(c: Cursor, uid: bool) -> Search:
    """SEARCH [search-return-opts] SP search-program (RFC 9051 §9, RFC 4731 §3)."""
    ret = None
    c.sp()
    if c.try_keyword("RETURN"):
        ret = _return_opts(c)
        c.sp()
    charset = None
    if c.try_keyword("CHARSET"):
        c.sp()
        charset = _charset(c)
        c.sp()
    return Search(_program(c, charset), charset, ret)


def _program(c: Cursor, charset: str | None) -> SearchKey:
    keys = [search_key(c, charset)]
    while c.try_sp():
        keys.append(search_key(c, charset))
    return SearchKey("AND", tuple(keys))


def _search_string(c: Cursor, charset: str | None) -> str:
    """Decoded as UTF-8: the default (RFC 9051 §6.4.4) and a superset of US-ASCII, so 8-bit text sent
    under "CHARSET US-ASCII" is still searched for, as the reference server does."""
    raw = c.astring()
    if charset not in (None, *SUPPORTED_CHARSETS):
        return raw.decode("utf-8", "replace")  # answered NO [BADCHARSET] once parsed
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise c.fail("Search string is not valid UTF-8") from None


def search_key(c: Cursor, charset: str | None) -> SearchKey:
    """One search-key (RFC 9051 §9 / RFC 3501 §9; MODSEQ RFC 7162 §3.1.5; OLDER/YOUNGER RFC 5032)."""
    ch = c.peek()
    if ch == b"(":
        c.depth += 1
        if c.depth > MAX_DEPTH:
            raise c.fail("Search program nested too deeply")
        keys = c.paren_list(lambda: search_key(c, charset))
        c.depth -= 1
        if not keys:
            raise c.fail("Empty parenthesised search key")
        return SearchKey("AND", tuple(keys))
    if ch.isdigit() or ch in (b"*", b"$"):
        return SearchKey("SEQSET", (c.sequence_set(),))
    word = c.keyword()
    if word in _NO_ARG_KEYS:
        return SearchKey(word)
    c.sp()
    if word in _STRING_KEYS:
        return SearchKey(word, (_search_string(c, charset),))
    if word in _DATE_KEYS:
        return SearchKey(word, (c.date(),))
    if word in ("KEYWORD", "UNKEYWORD"):
        return SearchKey(word, (c.atom(),))
    if word == "HEADER":
        name = c.astring_str("Header field name")
        c.sp()
        return SearchKey(word, (name, _search_string(c, charset)))
    if word in ("LARGER", "SMALLER"):
        return SearchKey(word, (c.number(limit=MAX_NUMBER64),))
    if word == "UID":
        return SearchKey(word, (c.sequence_set(),))
    if word in ("OLDER", "YOUNGER"):
        return SearchKey(word, (c.number(nz=True),))
    if word == "NOT":
        return SearchKey(word, (_nested(c, charset),))
    if word == "OR":
        a = _nested(c, charset)
        c.sp()
        return SearchKey(word, (a, _nested(c, charset)))
    if word == "MODSEQ":
        return _modseq_key(c)
    raise c.fail(f"Unknown search key {word}")


def _nested(c: Cursor, charset: str | None) -> SearchKey:
    c.depth += 1
    if c.depth > MAX_DEPTH:
        raise c.fail("Search program nested too deeply")
    key = search_key(c, charset)
    c.depth -= 1
    return key


def _modseq_key(c: Cursor) -> SearchKey:
    """search-modsequence = "MODSEQ" [SP entry-name SP entry-type-req] SP mod-sequence-valzer (RFC 7162 §7)."""
    entry = etype = None
    if c.peek() == b'"':
        m = _ENTRY_NAME.match(c.quoted())
        if not m:
            raise c.fail('Expected an entry name "/flags/..."')
        entry = "/flags/" + m.group(1).decode("ascii")
        c.sp()
        etype = c.keyword()
        if etype not in _ENTRY_TYPES:
            raise c.fail("Entry type is priv, shared or all")
        etype = etype.lower()
        c.sp()
    return SearchKey("MODSEQ", (c.number(limit=MAX_NUMBER64), entry, etype))


# ---- SORT / THREAD (RFC 5256 §5) ---------------------------------------------------------

def sort(c: Cursor, uid: bool) -> Sort:
    """SORT [sort-return-opts] SP sort-criteria SP search-criteria."""
    c.sp()
    ret = None
    if c.try_keyword("RETURN"):
        ret = _return_opts(c)
        c.sp()

    def criterion() -> tuple[str, bool]:
        reverse = c.try_keyword("REVERSE")
        if reverse:
            c.sp()
        key = c.keyword()
        if key not in _SORT_KEYS:
            raise c.fail(f"Unknown sort key {key}")
        return key, reverse

    criteria = c.paren_list(criterion)
    if not criteria:
        raise c.fail("SORT needs at least one criterion")
    c.sp()
    charset = _charset(c)
    c.sp()
    return Sort(tuple(criteria), charset, _program(c, charset), ret)


def thread(c: Cursor, uid: bool) -> Thread:
    """THREAD SP thread-alg SP search-criteria."""
    c.sp()
    alg = c.keyword()
    if alg not in _THREAD_ALGS:
        raise c.fail(f"Unknown threading algorithm {alg}")
    c.sp()
    charset = _charset(c)
    c.sp()
    return Thread(alg, charset, _program(c, charset))


__all__ = ["ProtocolError", "fetch", "search", "search_key", "sort", "thread"]
