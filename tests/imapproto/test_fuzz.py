"""Property tests of the parser (hypothesis): no input raises, every refusal is a BAD carrying the
tag when one was readable, and generated commands survive serialize -> parse unchanged.

Budget: a few hundred examples per property, no deadline; the file runs in well under a minute.
"""

from __future__ import annotations

import datetime as dt
import os
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.access.imapproto import mutf7
from services.access.imapproto.parser import Bad, Command, CommandReader, Fatal, NeedLiteral, RawLine
from services.access.imapproto.types import (
    Append,
    AppendMessage,
    CopyMove,
    Fetch,
    FetchAtt,
    ListCmd,
    Login,
    QresyncParams,
    Search,
    SearchKey,
    Section,
    Select,
    SequenceSet,
    Sort,
    Status,
    Store,
    UidExpunge,
)

# IMAPPROTO_FUZZ_EXAMPLES raises the budget for a longer campaign by hand.
SETTINGS = settings(max_examples=int(os.environ.get("IMAPPROTO_FUZZ_EXAMPLES", "250")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
EVENT_TYPES = (Command, NeedLiteral, Bad, RawLine, Fatal)


def feed_chunked(reader: CommandReader, data: bytes, cuts: list[int], decisions: list[bool]) -> list[object]:
    """Feed DATA split at CUTS; answer each NeedLiteral from DECISIONS (accept when they run out)."""
    points = sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]
    out: list[object] = []
    start = 0
    d = iter(decisions)
    for p in points:
        reader.feed(data[start:p])
        start = p
        while True:
            ev = reader.next_event()
            if ev is None or isinstance(ev, Fatal):
                if ev is not None:
                    out.append(ev)
                break
            out.append(ev)
            if isinstance(ev, NeedLiteral):
                (reader.accept_literal if next(d, True) else reader.refuse_literal)()
        if out and isinstance(out[-1], Fatal):
            break
    return out


# ---- 1. random input: nothing raises -------------------------------------------------------

TOKENS = [b"a1 ", b"* ", b"+ ", b"UID ", b"FETCH ", b"SEARCH ", b"STORE ", b"APPEND ", b"LOGIN ", b"SELECT ",
          b"LIST ", b"SORT ", b"THREAD ", b"STATUS ", b"AUTHENTICATE ", b"ID ", b"ENABLE ", b"COPY ",
          b"NOT ", b"OR ", b"CHARSET ", b"RETURN ", b"(", b")", b" ", b"{3}\r\n", b"{2+}\r\n", b"~{1}\r\n",
          b"{0}\r\n", b"{99999999999999999999999}\r\n", b"\r\n", b"\n", b'"', b"\\", b"BODY[", b"]", b"<0.5>",
          b"1:*", b"$", b"INBOX", b"&", b"-", b"&AOk-", b"HEADER.FIELDS", b"(CHANGEDSINCE 1)", b"+FLAGS",
          b"\\Seen", b"1-Feb-1994", b'"01-Feb-1994 00:00:00 +0000"', b"\x00", b"\xff", b"UTF-8 ", b"%", b"*"]
noise = st.lists(st.sampled_from(TOKENS) | st.binary(max_size=6), max_size=40).map(b"".join)


@SETTINGS
@given(data=noise | st.binary(max_size=300), cuts=st.lists(st.integers(0, 400), max_size=8),
       decisions=st.lists(st.booleans(), max_size=6), utf8=st.booleans(), minus=st.booleans())
def test_random_input_never_raises(data: bytes, cuts: list[int], decisions: list[bool], utf8: bool,
                                   minus: bool) -> None:
    def reader() -> CommandReader:
        r = CommandReader(max_line=120, max_literal=64, max_command=400, max_literal_discard=200)
        r.utf8_accept, r.literal_minus = utf8, minus
        return r

    r = reader()
    events = feed_chunked(r, data, cuts, decisions)
    assert all(isinstance(e, EVENT_TYPES) for e in events)
    assert r.buffered() <= len(data)
    assert feed_chunked(reader(), data, [], decisions) == events, "the chunking changed the result"
    for e in events:
        if isinstance(e, Bad):
            assert e.text
        if isinstance(e, Command):
            assert e.tag and "+" not in e.tag


# ---- 2. mutated commands: every refusal is a tagged BAD -------------------------------------

SEEDS = [b"FETCH 1:* (UID FLAGS BODY.PEEK[1.2.HEADER.FIELDS (From To)]<0.100>)", b"UID STORE 1,3:5 +FLAGS (\\Seen)",
         b'SEARCH CHARSET UTF-8 OR NOT (SEEN FLAGGED) SINCE 1-Feb-1994 HEADER Subject "x y"',
         b'LIST (SUBSCRIBED) "" ("INBOX" "a/%") RETURN (STATUS (MESSAGES))', b"SELECT INBOX (QRESYNC (1 2 1:9))",
         b'LOGIN "us er" pass', b"STATUS INBOX (MESSAGES UIDNEXT)", b"UID SORT (REVERSE DATE) UTF-8 ALL",
         b"THREAD REFERENCES UTF-8 SUBJECT x", b'APPEND INBOX (\\Seen) "01-Feb-1994 00:00:00 +0000" CATENATE (URL x)',
         b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE 5 VANISHED)", b'ID ("name" "x")', b"CREATE a (USE (\\Sent))",
         b"SETQUOTA \"\" (STORAGE 1)", b"UID SENDMAIL 5 (FROM a RECIPIENT b)", b"AUTHENTICATE PLAIN AGE="]
MUTATION_BYTES = [bytes([b]) for b in range(256) if b not in b"\r\n{}"]


@SETTINGS
@given(seed=st.sampled_from(SEEDS), tag=st.from_regex(rb"[A-Za-z0-9.\]_-]{1,8}", fullmatch=True),
       edits=st.lists(st.tuples(st.sampled_from(["ins", "del", "rep"]), st.integers(0, 200),
                                st.sampled_from(MUTATION_BYTES)), max_size=4),
       cuts=st.lists(st.integers(0, 300), max_size=5))
def test_mutated_commands_answer_with_the_tag(seed: bytes, tag: bytes, edits: list[tuple[str, int, bytes]],
                                              cuts: list[int]) -> None:
    body = bytearray(seed)
    for op, pos, byte in edits:
        pos %= len(body) + 1
        if op == "ins":
            body[pos:pos] = byte
        elif op == "del" and pos < len(body):
            del body[pos]
        elif pos < len(body):
            body[pos:pos + 1] = byte
    events = feed_chunked(CommandReader(), tag + b" " + bytes(body) + b"\r\n", cuts, [])
    assert len(events) == 1, events
    ev = events[0]
    assert isinstance(ev, Command | Bad), ev
    assert ev.tag == tag.decode()


# ---- 3. round trip: generated command -> test-side encoder -> parser -> equal -------------

ASTRING_ATOM = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5d-\x7a\x7c-\x7e]+\Z")
QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*\Z")


class Encoder:
    """Writes a command, drawing for each string whether it goes as atom, quoted or literal."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def string(self, raw: bytes, atom_ok: bool = True) -> bytes:
        choices = ["sync", "nonsync"]
        if QUOTABLE.match(raw):
            choices.append("quoted")
        if atom_ok and ASTRING_ATOM.match(raw) and raw.upper() != b"NIL":
            choices.append("atom")
        how = self.draw(st.sampled_from(choices))
        if how == "atom":
            return raw
        if how == "quoted":
            return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        return self.literal(raw, how == "nonsync")

    def literal(self, raw: bytes, nonsync: bool, binary: bool = False) -> bytes:
        return b"%s{%d%s}\r\n" % (b"~" if binary else b"", len(raw), b"+" if nonsync else b"") + raw

    def mailbox(self, name: str) -> bytes:
        return self.string(mutf7.encode(name))

    def case(self, word: str) -> bytes:
        return self.draw(st.sampled_from([word.upper(), word.lower(), word.capitalize()])).encode()


text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
names = st.text(st.characters(exclude_categories=["Cs", "Cc", "Zl", "Zp"]), max_size=10)
numbers = st.integers(1, 2**32 - 1)
seq_item = st.one_of(numbers, st.none())
seqsets_nosave = st.lists(st.tuples(seq_item, seq_item), min_size=1, max_size=4).map(
    lambda rs: SequenceSet(tuple(rs)))
seqsets = st.lists(st.tuples(seq_item, seq_item), min_size=1, max_size=4).map(
    lambda rs: SequenceSet(tuple(rs))) | st.just(SequenceSet(saved=True))
keywords = st.from_regex(r"[A-Za-z$][A-Za-z0-9_$-]{0,8}", fullmatch=True).filter(lambda k: k.upper() != "NIL")
flags = st.lists(st.sampled_from(["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"]) | keywords,
                 max_size=4).map(tuple)
field_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,10}", fullmatch=True)
dates = st.dates(dt.date(1000, 1, 1), dt.date(9999, 12, 31))


def enc_seq(s: SequenceSet) -> bytes:
    if s.saved:
        return b"$"
    return b",".join(b"%s:%s" % (_n(a), _n(b)) if a != b else _n(a) for a, b in s.ranges)


def _n(x: int | None) -> bytes:
    return b"*" if x is None else b"%d" % x


def enc_flags(f: tuple[str, ...]) -> bytes:
    return b"(" + b" ".join(x.encode() for x in f) + b")"


search_leaf = st.one_of(
    st.sampled_from(["ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "SEEN", "UNANSWERED", "UNDELETED",
                     "UNDRAFT", "UNFLAGGED", "UNSEEN", "NEW", "OLD", "RECENT"]).map(SearchKey),
    st.tuples(st.sampled_from(["BCC", "CC", "FROM", "TO", "SUBJECT", "BODY", "TEXT"]), text).map(
        lambda t: SearchKey(t[0], (t[1],))),
    st.tuples(st.sampled_from(["BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"]), dates).map(
        lambda t: SearchKey(t[0], (t[1],))),
    st.tuples(st.sampled_from(["KEYWORD", "UNKEYWORD"]), keywords).map(lambda t: SearchKey(t[0], (t[1],))),
    st.tuples(field_names, text).map(lambda t: SearchKey("HEADER", t)),
    st.tuples(st.sampled_from(["LARGER", "SMALLER"]), st.integers(0, 2**40)).map(lambda t: SearchKey(t[0], (t[1],))),
    st.tuples(st.sampled_from(["UID", "SEQSET"]), seqsets).map(lambda t: SearchKey(t[0], (t[1],))),
    st.integers(0, 2**63 - 1).map(lambda n: SearchKey("MODSEQ", (n, None, None))),
    st.integers(0, 99).map(lambda n: SearchKey("MODSEQ", (n, "/flags/\\Seen", "shared"))),
)
search_keys = st.recursive(search_leaf, lambda kids: st.one_of(
    kids.map(lambda k: SearchKey("NOT", (k,))),
    st.tuples(kids, kids).map(lambda t: SearchKey("OR", t)),
    st.lists(kids, min_size=1, max_size=3).map(lambda ks: SearchKey("AND", tuple(ks)))), max_leaves=8)


def enc_key(e: Encoder, k: SearchKey) -> bytes:
    op, args = k.op, k.args
    if op == "AND":
        return b"(" + b" ".join(enc_key(e, a) for a in args) + b")"
    if op == "SEQSET":
        return enc_seq(args[0])
    head = e.case(op)
    if not args:
        return head
    if op in ("NOT",):
        return head + b" " + enc_key(e, args[0])
    if op == "OR":
        return head + b" " + enc_key(e, args[0]) + b" " + enc_key(e, args[1])
    if op == "HEADER":
        return head + b" " + e.string(args[0].encode()) + b" " + e.string(args[1].encode())
    if op == "MODSEQ":
        n, entry, etype = args
        ent = b"" if entry is None else b'"%s" %s ' % (entry.replace("\\", "\\\\").encode(), etype.encode())
        return head + b" " + ent + b"%d" % n
    a = args[0]
    if isinstance(a, dt.date):
        day = b"%d-%s-%04d" % (a.day, a.strftime("%b").encode(), a.year)
        return head + b" " + e.draw(st.sampled_from([day, b'"' + day + b'"']))
    if isinstance(a, SequenceSet):
        return head + b" " + enc_seq(a)
    if isinstance(a, int):
        return head + b" %d" % a
    if op in ("KEYWORD", "UNKEYWORD"):
        return head + b" " + a.encode()
    return head + b" " + e.string(a.encode())


sections = st.one_of(
    st.just(Section()),
    st.lists(st.integers(1, 60), min_size=1, max_size=3).map(lambda p: Section(tuple(p))),
    st.tuples(st.lists(st.integers(1, 9), max_size=2), st.sampled_from(["HEADER", "TEXT"])).map(
        lambda t: Section(tuple(t[0]), t[1])),
    st.lists(st.integers(1, 9), min_size=1, max_size=2).map(lambda p: Section(tuple(p), "MIME")),
    st.tuples(st.lists(st.integers(1, 9), max_size=2), st.sampled_from(["HEADER.FIELDS", "HEADER.FIELDS.NOT"]),
              st.lists(field_names, min_size=1, max_size=3)).map(lambda t: Section(tuple(t[0]), t[1], tuple(t[2]))),
)
partials = st.none() | st.tuples(st.integers(0, 2**40), st.integers(1, 2**40))
fetch_atts = st.one_of(
    st.sampled_from(["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "RFC822",
                     "RFC822.HEADER", "RFC822.TEXT", "MODSEQ", "BODY"]).map(FetchAtt),
    st.tuples(sections, st.booleans(), partials).map(lambda t: FetchAtt("BODY", *t)),
    st.tuples(st.lists(st.integers(1, 9), max_size=3), st.booleans(), partials).map(
        lambda t: FetchAtt("BINARY", Section(tuple(t[0])), t[1], t[2])),
    st.lists(st.integers(1, 9), max_size=3).map(lambda p: FetchAtt("BINARY.SIZE", Section(tuple(p)))),
)


def enc_att(e: Encoder, a: FetchAtt) -> bytes:
    if a.section is None:
        return e.case(a.name)
    s = a.section
    if a.name == "BINARY.SIZE":
        return e.case("BINARY.SIZE") + b"[" + ".".join(map(str, s.part)).encode() + b"]"
    name = a.name + (".PEEK" if a.peek else "")
    spec = ".".join([*map(str, s.part), *([s.text] if s.text else [])]).encode()
    if s.fields:
        spec += b" (" + b" ".join(e.string(f.encode()) for f in s.fields) + b")"
    part = b"" if a.partial is None else b"<%d.%d>" % a.partial
    return e.case(name) + b"[" + spec + b"]" + part


@st.composite
def commands(draw: st.DrawFn) -> tuple[Command, bytes]:
    e = Encoder(draw)
    tag = draw(st.from_regex(r"[A-Za-z0-9.]{1,6}", fullmatch=True))
    kind = draw(st.sampled_from(["LOGIN", "SELECT", "STATUS", "FETCH", "STORE", "COPY", "SEARCH", "APPEND",
                                 "LIST", "SORT", "EXPUNGE"]))
    uid = draw(st.booleans()) and kind in ("FETCH", "STORE", "COPY", "SEARCH", "SORT") or kind == "EXPUNGE"
    words = (b"UID " if uid else b"") + e.case(kind)
    if kind == "LOGIN":
        user, pw = draw(text), draw(text)
        return Command(tag, kind, Login(user, pw)), words + b" " + e.string(user.encode()) + b" " + e.string(
            pw.encode())
    if kind == "EXPUNGE":
        s = draw(seqsets)
        return Command(tag, kind, UidExpunge(s), True), words + b" " + enc_seq(s)
    if kind == "LIST":
        return _list(draw, e, tag, words)
    if kind == "SORT":
        crit = tuple(draw(st.lists(st.tuples(st.sampled_from(["ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT",
                                                              "TO"]), st.booleans()), min_size=1, max_size=3)))
        keys = tuple(draw(st.lists(search_keys, min_size=1, max_size=2)))
        line = words + b" (" + b" ".join((b"REVERSE " if r else b"") + e.case(k) for k, r in crit) + b") UTF-8 "
        return (Command(tag, kind, Sort(crit, "UTF-8", SearchKey("AND", keys)), uid),
                line + b" ".join(enc_key(e, k) for k in keys))
    if kind in ("SELECT", "STATUS", "COPY"):
        name = draw(names)
        expect = "INBOX" if name.upper() == "INBOX" else name
        if kind == "SELECT":
            cond = draw(st.booleans())
            q = draw(st.none() | st.tuples(numbers, st.integers(0, 2**63 - 1), st.none() | seqsets_nosave,
                                           st.none() | st.tuples(seqsets_nosave, seqsets_nosave)))
            params = [b"CONDSTORE"] if cond else []
            if q is not None:
                qs = b"%d %d" % q[:2] + (b" " + enc_seq(q[2]) if q[2] else b"")
                qs += b" (%s %s)" % (enc_seq(q[3][0]), enc_seq(q[3][1])) if q[3] else b""
                params.append(b"QRESYNC (" + qs + b")")
            line = words + b" " + e.mailbox(name) + (b" (" + b" ".join(params) + b")" if params else b"")
            return Command(tag, kind, Select(expect, False, cond, QresyncParams(*q) if q else None)), line
        if kind == "STATUS":
            items = tuple(draw(st.lists(st.sampled_from(["MESSAGES", "UIDNEXT", "UNSEEN", "SIZE"]), min_size=1,
                                        max_size=3)))
            return (Command(tag, kind, Status(expect, items)),
                    words + b" " + e.mailbox(name) + b" (" + " ".join(items).encode() + b")")
        s = draw(seqsets)
        return Command(tag, kind, CopyMove(s, expect), uid), words + b" " + enc_seq(s) + b" " + e.mailbox(name)
    if kind == "FETCH":
        s = draw(seqsets)
        atts = tuple(draw(st.lists(fetch_atts, min_size=1, max_size=4)))
        changed = draw(st.none() | st.integers(0, 2**63 - 1))
        vanished = uid and changed is not None and draw(st.booleans())
        mods = [] if changed is None else [b"CHANGEDSINCE %d" % changed] + ([b"VANISHED"] if vanished else [])
        line = words + b" " + enc_seq(s) + b" (" + b" ".join(enc_att(e, a) for a in atts) + b")"
        if mods:
            line += b" (" + b" ".join(mods) + b")"
        return Command(tag, kind, Fetch(s, atts, changed, vanished), uid), line
    if kind == "STORE":
        s = draw(seqsets)
        action, silent, fl = draw(st.sampled_from(["set", "add", "remove"])), draw(st.booleans()), draw(flags)
        unchanged = draw(st.none() | st.integers(0, 2**63 - 1))
        item = {"set": "", "add": "+", "remove": "-"}[action] + "FLAGS" + (".SILENT" if silent else "")
        mod = b"" if unchanged is None else b" (UNCHANGEDSINCE %d)" % unchanged
        flag_bytes = enc_flags(fl) if not fl or draw(st.booleans()) else b" ".join(f.encode() for f in fl)
        return (Command(tag, kind, Store(s, action, silent, fl, unchanged), uid),
                words + b" " + enc_seq(s) + mod + b" " + e.case(item) + b" " + flag_bytes)
    if kind == "SEARCH":
        keys = tuple(draw(st.lists(search_keys, min_size=1, max_size=3)))
        charset = draw(st.sampled_from([None, "UTF-8"]))
        head = words + (b" CHARSET " + charset.encode() if charset else b"")
        return (Command(tag, kind, Search(SearchKey("AND", keys), charset), uid),
                head + b" " + b" ".join(enc_key(e, k) for k in keys))
    # APPEND, MULTIAPPEND with literal8
    name = draw(names)
    msgs = []
    line = words + b" " + e.mailbox(name)
    for _ in range(draw(st.integers(1, 3))):
        fl = draw(flags)
        when = draw(st.none() | st.datetimes(dt.datetime(1970, 1, 1), dt.datetime(2100, 1, 1)).map(
            lambda d: d.replace(microsecond=0)))
        tz = dt.timezone(dt.timedelta(minutes=draw(st.integers(-23 * 60 - 59, 23 * 60 + 59))))
        binary = draw(st.booleans())
        body = draw(st.binary(max_size=30))
        if not binary:
            body = body.replace(b"\x00", b"")
        if fl or draw(st.booleans()):
            line += b" " + enc_flags(fl)
        if when is not None:
            when = when.replace(tzinfo=tz)
            off = int(tz.utcoffset(None).total_seconds() // 60)
            line += b' "%2d-%s-%04d %02d:%02d:%02d %s%02d%02d"' % (
                when.day, when.strftime("%b").encode(), when.year, when.hour, when.minute, when.second,
                b"-" if off < 0 else b"+", abs(off) // 60, abs(off) % 60)
        line += b" " + e.literal(body, draw(st.booleans()), binary)
        msgs.append(AppendMessage(fl, when, body, binary))
    expect = "INBOX" if name.upper() == "INBOX" else name
    return Command(tag, kind, Append(expect, tuple(msgs))), line


def _list(draw: st.DrawFn, e: Encoder, tag: str, words: bytes) -> tuple[Command, bytes]:
    ref, pats = draw(names), draw(st.lists(names | st.sampled_from(["*", "%", "a/%"]), min_size=1, max_size=3))
    select = frozenset(draw(st.sets(st.sampled_from(["SUBSCRIBED", "REMOTE", "SPECIAL-USE"]))))
    ret = frozenset(draw(st.sets(st.sampled_from(["SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"]))))
    items = ("MESSAGES", "UNSEEN") if "STATUS" in ret else ()
    multi = len(pats) > 1 or draw(st.booleans())
    extended = bool(select or ret or multi or draw(st.booleans()))
    line = words
    if select or (extended and not ret and not multi):
        line += b" (" + b" ".join(o.encode() for o in sorted(select)) + b")"
    line += b" " + e.mailbox(ref) + b" "
    line += (b"(" + b" ".join(e.mailbox(p) for p in pats) + b")") if multi else e.mailbox(pats[0])
    if ret:
        line += b" RETURN (" + b" ".join(o.encode() + (b" (MESSAGES UNSEEN)" if o == "STATUS" else b"")
                                          for o in sorted(ret)) + b")"
    norm = tuple("INBOX" if p.upper() == "INBOX" else p for p in pats)
    ref = "INBOX" if ref.upper() == "INBOX" else ref
    return Command(tag, "LIST", ListCmd(ref, norm, False, select, ret, items, extended)), line


@SETTINGS
@given(pair=commands(), cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_round_trip(pair: tuple[Command, bytes], cuts: list[int]) -> None:
    expected, line = pair
    wire = expected.tag.encode() + b" " + line + b"\r\n"
    events = [e for e in feed_chunked(CommandReader(), wire, cuts, []) if not isinstance(e, NeedLiteral)]
    assert events == [expected]
