"""The IMAP command grammar: RFC 9051 / RFC 3501 examples, the extensions, and the tricky cases."""

from __future__ import annotations

import datetime as dt

import pytest

from services.access.imapproto.parser import Bad, CommandReader
from services.access.imapproto.types import (
    Append,
    AppendMessage,
    Authenticate,
    CatenatePart,
    Command,
    Compress,
    CopyMove,
    Create,
    Enable,
    Fetch,
    FetchAtt,
    GetQuota,
    Id,
    ListCmd,
    Login,
    MailboxArg,
    NoArgs,
    QresyncParams,
    Rename,
    Search,
    SearchKey,
    Section,
    Select,
    SequenceSet,
    SetQuota,
    Sort,
    Status,
    Store,
    Thread,
    UidExpunge,
    UidSendmail,
)

from .helpers import one

K = SearchKey


def cmd(line: bytes, reader: CommandReader | None = None) -> Command:
    ev = one(line if line.endswith(b"\n") else line + b"\r\n", reader)
    assert isinstance(ev, Command), ev
    return ev


def bad(line: bytes, reader: CommandReader | None = None) -> Bad:
    ev = one(line if line.endswith(b"\n") else line + b"\r\n", reader)
    assert isinstance(ev, Bad), ev
    return ev


def seq(*ranges: tuple[int | None, int | None]) -> SequenceSet:
    return SequenceSet(tuple(ranges))


# ---- simple commands -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "UNSELECT",
                                  "IDLE", "NAMESPACE", "EXPUNGE"])
def test_commands_without_arguments(name: str) -> None:
    c = cmd(b"a001 " + name.lower().encode())
    assert c == Command("a001", name, NoArgs())
    assert bad(b"a001 " + name.encode() + b" x").tag == "a001"


def test_login_rfc_example_and_quoted_escapes() -> None:
    assert cmd(b"a001 LOGIN SMITH SESAME").args == Login("SMITH", "SESAME")
    assert cmd(rb'a2 LOGIN "fred \"the\" user" "back\\slash"').args == Login('fred "the" user', "back\\slash")


def test_quoted_string_only_escapes_quote_and_backslash() -> None:
    # RFC 9051 §9: "\" is followed only by quoted-specials.
    assert bad(rb'a LOGIN "a\nb" pw').tag == "a"
    assert bad(b'a LOGIN "unterminated pw').tag == "a"


def test_login_rfc7888_nonsync_literals() -> None:
    """RFC 7888 §3 example: LOGIN {11+} / FRED FOOBAR {7+} / fat man."""
    c = cmd(b"A001 LOGIN {11+}\r\nFRED FOOBAR {7+}\r\nfat man\r\n")
    assert c.args == Login("FRED FOOBAR", "fat man")


def test_authenticate_with_and_without_sasl_ir() -> None:
    assert cmd(b"A001 AUTHENTICATE GSSAPI").args == Authenticate("GSSAPI", None)
    assert cmd(b"a authenticate plain AGZyZWQAc2VjcmV0").args == Authenticate("PLAIN", b"\0fred\0secret")
    assert cmd(b"a AUTHENTICATE PLAIN =").args == Authenticate("PLAIN", b"")  # RFC 4959 §3: empty response
    assert bad(b"a AUTHENTICATE PLAIN AGZy!ZWQ").tag == "a"
    assert bad(b"a AUTHENTICATE PLAIN AGZ").tag == "a"  # not a multiple of 4


def test_enable_id_compress() -> None:
    assert cmd(b"t2 ENABLE CONDSTORE X-GOOD-IDEA").args == Enable(("CONDSTORE", "X-GOOD-IDEA"))
    assert cmd(b"a ENABLE utf8=accept").args == Enable(("UTF8=ACCEPT",))
    assert bad(b"a ENABLE").tag == "a"
    c = cmd(b'a023 ID ("name" "sodr" "version" "19.34" "vendor" "Pink Floyd Music Limited")')
    assert c.args == Id((("name", "sodr"), ("version", "19.34"), ("vendor", "Pink Floyd Music Limited")))
    assert cmd(b"a ID NIL").args == Id(None)
    assert cmd(b'a ID ("os" NIL)').args == Id((("os", None),))
    assert bad(b'a ID ("name")').tag == "a"
    assert cmd(b"a COMPRESS deflate").args == Compress("DEFLATE")


# ---- mailbox commands ---------------------------------------------------------------------

def test_select_examine_and_inbox_in_any_case() -> None:
    assert cmd(b"A142 SELECT INBOX").args == Select("INBOX", False)
    assert cmd(b"A932 EXAMINE blurdybloop").args == Select("blurdybloop", True)
    assert cmd(b"a SELECT inbox").args.mailbox == "INBOX"
    assert cmd(b'a SELECT "InBoX"').args.mailbox == "INBOX"
    assert cmd(b"a SELECT {5}\r\niNbOx\r\n").args.mailbox == "INBOX"  # a literal mailbox name
    assert cmd(b"a SELECT INBOX.sub").args.mailbox == "INBOX.sub"


def test_select_condstore_and_qresync_rfc7162_examples() -> None:
    assert cmd(b"a SELECT INBOX (CONDSTORE)").args == Select("INBOX", False, True)
    c = cmd(b"A02 SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))")
    assert c.args.qresync == QresyncParams(67890007, 20050715194045000, seq((41, 41), (43, 211), (214, 541)))
    c = cmd(b"B04 SELECT INBOX (QRESYNC (67890007 90060115194045000 1:29997 (5000,7500,9000,9990:9999 "
            b"15000,22500,27000,29970,29973,29976,29979,29982,29985,29988,29991,29994,29997)))")
    q = c.args.qresync
    assert q.known_uids == seq((1, 29997))
    assert q.seq_match[0] == seq((5000, 5000), (7500, 7500), (9000, 9000), (9990, 9999))
    assert q.seq_match[1].ranges[-1] == (29997, 29997)
    c = cmd(b"a EXAMINE x (QRESYNC (1 2 (1:2 3:4)) CONDSTORE)")
    assert c.args.readonly and c.args.condstore and c.args.qresync.seq_match == (seq((1, 2)), seq((3, 4)))
    assert bad(b"a SELECT INBOX (QRESYNC (0 5))").tag == "a"  # uidvalidity is nz-number
    assert bad(b"a SELECT INBOX (FOO)").tag == "a"
    assert bad(b"a SELECT INBOX ()").tag == "a"
    assert cmd(b"a SELECT INBOX (CONDSTORE CONDSTORE)").args.condstore  # a repeat is harmless
    assert bad(b"a SELECT INBOX (QRESYNC (1 2) QRESYNC (1 2))").tag == "a"


def test_create_delete_rename_subscribe() -> None:
    assert cmd(b"A003 CREATE owatagusiam/").args == Create("owatagusiam/")
    assert cmd(rb'a CREATE "Important Messages" (USE (\Important))').args == Create(
        "Important Messages", ("\\Important",))
    assert cmd(b"A683 DELETE blurdybloop").args == MailboxArg("blurdybloop")
    assert cmd(b"A683 RENAME blurdybloop sarasoop").args == Rename("blurdybloop", "sarasoop")
    assert cmd(b"A002 SUBSCRIBE #news.comp.mail.mime").args == MailboxArg("#news.comp.mail.mime")
    assert cmd(b"A002 UNSUBSCRIBE #news.comp.mail.mime").name == "UNSUBSCRIBE"
    assert cmd(rb"a CREATE Sent (USE (\sent \JUNK))").args.special_use == ("\\Sent", "\\Junk")
    assert bad(b"a CREATE x (FOO (\\Sent))").tag == "a"
    assert bad(b"a RENAME onlyone").tag == "a"


@pytest.mark.parametrize("name", [b"#news", b"&-amp", b"wow!", b"a+b", b"a-b", b"~peter", b"x]y", b"a.b/c",
                                  b"$Junk", b"'q'", b"[Gmail]", b"100%".replace(b"%", b"")])
def test_mailbox_names_of_legal_atom_characters(name: bytes) -> None:
    """The conformance suite failed the old server on these: every ASTRING-CHAR is legal."""
    c = cmd(b"a CREATE " + name)
    assert c.args.mailbox == name.decode().replace("&-", "&")


def test_modified_utf7_names_are_decoded_and_malformed_ones_refused() -> None:
    assert cmd(b"a SELECT Entw&APw-rfe").args.mailbox == "Entwürfe"
    assert cmd(b"a SELECT ~peter/mail/&U,BTFw-/&ZeVnLIqe-").args.mailbox == "~peter/mail/台北/日本語"
    # Well-formed commands with an unusable name: NO (as Dovecot answers), with the tag.
    for name in (b"&AGE-", b"&U,BTFw", b"a&b", b"&U,BTFw-&ZeVnLIqe-", b"&2D0-", b"&Jjo!", b"Odd!#$&'+-_~"):
        b = bad(b"a SELECT " + name)
        assert (b.tag, b.status) == ("a", "NO"), name
    assert bad("a SELECT {9}\r\nEntwürfe\r\n".encode()).status == "NO"  # 8-bit is not modified UTF-7
    assert bad(b"a SELECT &AAA-").status == "NO"  # NUL: RFC 9051 §5.1 forbids control characters
    assert bad(b'a SELECT "x\ty"').status == "NO"
    assert bad(b"a RENAME a&b").status == "BAD"  # the missing argument is the syntax error that counts
    # RFC 9051 §9 QUOTED-CHAR takes UTF-8, so a quoted 8-bit name parses; it is not modified UTF-7: NO
    assert bad("a SELECT \"Entwürfe\"".encode()).status == "NO"


def test_utf8_accept_names() -> None:
    r = CommandReader()
    r.utf8_accept = True
    assert cmd('a SELECT "Entwürfe"'.encode(), r).args.mailbox == "Entwürfe"
    assert cmd(b"a SELECT a&b", r).args.mailbox == "a&b"  # no modified UTF-7 under UTF8=ACCEPT
    assert cmd("a SELECT {9}\r\nEntwürfe\r\n".encode(), r).args.mailbox == "Entwürfe"
    assert bad(b'a SELECT "\xff\xfe"', r).tag == "a"


def test_list_basic_rfc_examples() -> None:
    assert cmd(b'A101 LIST "" ""').args == ListCmd("", ("",))
    assert cmd(b"A102 LIST #news.comp.mail.misc \"\"").args == ListCmd("#news.comp.mail.misc", ("",))
    assert cmd(b"A202 LIST ~/Mail/ %").args == ListCmd("~/Mail/", ("%",))
    assert cmd(b'A682 LIST "" *').args.patterns == ("*",)
    assert cmd(b"a LIST \"\" INBOX/%]").args.patterns == ("INBOX/%]",)
    assert cmd(b"a LSUB \"#news.\" \"comp.mail.*\"").args == ListCmd("#news.", ("comp.mail.*",), lsub=True)
    assert not cmd(b'a LIST "" *').args.extended


def test_list_extended_rfc5258_and_status_rfc5819() -> None:
    c = cmd(b'A01 LIST "" ("INBOX" "Drafts" "Sent/%")')
    assert c.args.patterns == ("INBOX", "Drafts", "Sent/%") and c.args.extended
    c = cmd(b'A05 LIST (SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (CHILDREN)')
    assert c.args.select_opts == {"SUBSCRIBED", "RECURSIVEMATCH"} and c.args.return_opts == {"CHILDREN"}
    c = cmd(b'A01 LIST "" % RETURN (STATUS (MESSAGES UNSEEN))')
    assert c.args.return_opts == {"STATUS"} and c.args.status_items == ("MESSAGES", "UNSEEN")
    assert c.args.extended
    c = cmd(b'a LIST (special-use) "" * RETURN (SPECIAL-USE SUBSCRIBED)')
    assert c.args.select_opts == {"SPECIAL-USE"} and c.args.return_opts == {"SPECIAL-USE", "SUBSCRIBED"}
    assert cmd(b'a LIST () "" % RETURN ()').args.extended
    assert bad(b'a LIST (RECURSIVEMATCH) "" %').tag == "a"  # RFC 5258 §3.1
    assert bad(b'a LIST (BOGUS) "" %').tag == "a"
    assert bad(b'a LIST "" % RETURN (BOGUS)').tag == "a"
    assert cmd(b'a LIST "" % RETURN (CHILDREN CHILDREN)').args.return_opts == {"CHILDREN"}
    assert bad(b'a LIST "" ()').tag == "a"


def test_status() -> None:
    c = cmd(b"A042 STATUS blurdybloop (UIDNEXT MESSAGES)")
    assert c.args == Status("blurdybloop", ("UIDNEXT", "MESSAGES"))
    c = cmd(b"a STATUS INBOX (messages recent uidnext uidvalidity unseen deleted size highestmodseq appendlimit)")
    assert len(c.args.items) == 9
    assert bad(b"a STATUS INBOX (FOO)").tag == "a"
    assert bad(b"a STATUS INBOX ()").tag == "a"


# ---- APPEND -------------------------------------------------------------------------------

MSG = (b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\nFrom: Fred Foobar <foobar@Blurdybloop.example>\r\n"
       b"Subject: afternoon meeting\r\n\r\nHello Joe, do you think we can meet at 3:30 tomorrow?\r\n")


def test_append_rfc_example_with_crlf_inside_literal() -> None:
    data = b"A003 APPEND saved-messages (\\Seen) {%d}\r\n" % len(MSG) + MSG + b"\r\n"
    c = cmd(data)
    assert c.args == Append("saved-messages", (AppendMessage(("\\Seen",), None, MSG),))


def test_append_date_time_and_flags() -> None:
    c = cmd(b'a APPEND INBOX (\\Seen $Forwarded) " 7-Feb-1994 21:52:25 -0800" {3}\r\nabc\r\n')
    m = c.args.messages[0]
    assert m.flags == ("\\Seen", "$Forwarded") and m.data == b"abc"
    assert m.date == dt.datetime(1994, 2, 7, 21, 52, 25, tzinfo=dt.timezone(-dt.timedelta(hours=8)))
    c = cmd(b'a APPEND INBOX "07-Feb-1994 21:52:25 +0000" {0}\r\n\r\n')
    assert c.args.messages[0].data == b"" and c.args.messages[0].date.utcoffset() == dt.timedelta(0)
    assert bad(b'a APPEND INBOX "31-Feb-1994 21:52:25 +0000" {0}\r\n\r\n').tag == "a"
    # date-day-fixed is " 7" or "07"; a bare "7" cannot be misread and is accepted, like Dovecot
    assert cmd(b'a APPEND INBOX "7-Feb-1994 21:52:25 +0000" {0}\r\n\r\n').args.messages[0].date.day == 7
    assert bad(b'a APPEND INBOX "7-Feb-1994 25:52:25 +0000" {0}\r\n\r\n').tag == "a"
    assert bad(b'a APPEND INBOX "07-Feb-1994 21:52:25 0000" {0}\r\n\r\n').tag == "a"


def test_multiappend_rfc3502() -> None:
    data = (b"A003 APPEND saved-messages (\\Seen) {3}\r\none (\\Seen) \"07-Feb-1994 22:43:04 -0800\" {3}\r\n"
            b"two {5+}\r\nthree\r\n")
    msgs = cmd(data).args.messages
    assert [m.data for m in msgs] == [b"one", b"two", b"three"]
    assert msgs[1].date is not None and msgs[2].flags == ()


def test_append_literal8_binary_rfc3516() -> None:
    c = cmd(b"a APPEND INBOX ~{4}\r\na\x00b\xff\r\n")
    assert c.args.messages[0] == AppendMessage((), None, b"a\x00b\xff", True)
    # NUL in a plain APPEND literal is taken (old mail migrated by mbsync; Dovecot takes it too),
    # but not in any other string.
    assert cmd(b"a APPEND INBOX {3}\r\na\x00b\r\n").args.messages[0].data == b"a\x00b"
    assert bad(b"a LOGIN {3}\r\na\x00b x\r\n").tag == "a"


def test_append_utf8_rfc6855() -> None:
    r = CommandReader()
    r.utf8_accept = True
    body = "Subject: caf\u00e9\r\n\r\n".encode()
    c = cmd(b"a APPEND INBOX (\\Seen) UTF8 (~{%d}\r\n%s)\r\n" % (len(body), body), r)
    assert c.args.messages == (AppendMessage(("\\Seen",), None, body, False, None, True),)
    assert bad(b"a APPEND INBOX UTF8 (~{1}\r\nx)\r\n").tag == "a"  # not enabled
    assert bad(b"a APPEND INBOX UTF8 ({1}\r\nx)\r\n", r).tag == "a"  # must be literal8


def test_append_catenate_rfc4469() -> None:
    text1 = b"\r\n--------------030308070208000400050907\r\n"
    data = (b'A003 APPEND Drafts (\\Seen \\Draft $MDNSent) CATENATE (URL "/Drafts;UIDVALIDITY=385759045/;'
            b'UID=20/;section=HEADER" TEXT {%d}\r\n' % len(text1) + text1
            + b' URL "/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1.MIME" TEXT ~{2+}\r\n\r\n)\r\n')
    m = cmd(data).args.messages[0]
    assert m.data is None and m.flags == ("\\Seen", "\\Draft", "$MDNSent")
    assert m.catenate == (CatenatePart("URL", "/Drafts;UIDVALIDITY=385759045/;UID=20/;section=HEADER"),
                          CatenatePart("TEXT", text1),
                          CatenatePart("URL", "/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1.MIME"),
                          CatenatePart("TEXT", b"\r\n"))
    assert bad(b"a APPEND Drafts CATENATE ()").tag == "a"
    assert bad(b"a APPEND Drafts CATENATE (TEXT foo)").tag == "a"


def test_append_bad_forms() -> None:
    assert bad(b"a APPEND INBOX").tag == "a"
    assert bad(b"a APPEND INBOX (\\Seen)").tag == "a"
    assert bad(b"a APPEND INBOX hello").tag == "a"
    assert bad(b"a APPEND INBOX {3}\r\nabc junk\r\n").tag == "a"


# ---- FETCH ---------------------------------------------------------------------------------

def test_fetch_rfc_examples() -> None:
    c = cmd(b"A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])")
    assert c.args == Fetch(seq((2, 4)), (FetchAtt("FLAGS"),
                                        FetchAtt("BODY", Section((), "HEADER.FIELDS", ("DATE", "FROM")))))
    c = cmd(b"A999 UID FETCH 4827313:4828442 FLAGS")
    assert c.uid and c.name == "FETCH" and c.args.atts == (FetchAtt("FLAGS"),)


def test_fetch_sections_and_partials() -> None:
    c = cmd(b"a FETCH 1 (BODY[1.2.HEADER.FIELDS (From To)]<0.100> BODY.PEEK[] BODY[TEXT] BODY[3.MIME] "
            b"BODY[1.2] BODY[HEADER.FIELDS.NOT (Received)] BODY[4.1.HEADER] body[]<10.5> BODY)")
    assert c.args.atts == (
        FetchAtt("BODY", Section((1, 2), "HEADER.FIELDS", ("From", "To")), False, (0, 100)),
        FetchAtt("BODY", Section(), True),
        FetchAtt("BODY", Section((), "TEXT")),
        FetchAtt("BODY", Section((3,), "MIME")),
        FetchAtt("BODY", Section((1, 2))),
        FetchAtt("BODY", Section((), "HEADER.FIELDS.NOT", ("Received",))),
        FetchAtt("BODY", Section((4, 1), "HEADER")),
        FetchAtt("BODY", Section(), False, (10, 5)),
        FetchAtt("BODY"),
    )


def test_fetch_macros_and_plain_atts() -> None:
    assert [a.name for a in cmd(b"a FETCH 1:* ALL").args.atts] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE",
                                                                  "ENVELOPE"]
    assert [a.name for a in cmd(b"a FETCH 1 fast").args.atts] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    assert [a.name for a in cmd(b"a FETCH 1 FULL").args.atts][-1] == "BODY"
    c = cmd(b"a FETCH 1 (UID RFC822 RFC822.HEADER RFC822.TEXT RFC822.SIZE ENVELOPE BODYSTRUCTURE INTERNALDATE "
            b"MODSEQ)")
    assert [a.name for a in c.args.atts] == ["UID", "RFC822", "RFC822.HEADER", "RFC822.TEXT", "RFC822.SIZE",
                                             "ENVELOPE", "BODYSTRUCTURE", "INTERNALDATE", "MODSEQ"]
    assert bad(b"a FETCH 1 (ALL)").tag == "a"  # macros only stand alone


def test_fetch_binary_rfc3516() -> None:
    c = cmd(b"a FETCH 1 (BINARY[1.2]<0.100> BINARY.PEEK[] BINARY.SIZE[1])")
    assert c.args.atts == (FetchAtt("BINARY", Section((1, 2)), False, (0, 100)),
                           FetchAtt("BINARY", Section(), True),
                           FetchAtt("BINARY.SIZE", Section((1,))))
    assert bad(b"a FETCH 1 BINARY[TEXT]").tag == "a"
    assert bad(b"a FETCH 1 BINARY.SIZE[1]<0.5>").tag == "a"


def test_fetch_condstore_qresync_modifiers() -> None:
    c = cmd(b"a103 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)")
    assert c.args.changedsince == 12345 and c.args.vanished and c.uid
    assert cmd(b"s100 FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)").args.changedsince == 12345
    assert bad(b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)").tag == "a"  # RFC 7162 §3.2.6: UID only
    assert bad(b"a UID FETCH 1:* (FLAGS) (VANISHED)").tag == "a"
    assert bad(b"a FETCH 1 FLAGS (FOO 1)").tag == "a"


@pytest.mark.parametrize("line", [
    b"a FETCH", b"a FETCH 1", b"a FETCH 0 FLAGS", b"a FETCH 1 (FOO)", b"a FETCH 1 ()", b"a FETCH 1 BODY[TEXT",
    b"a FETCH 1 BODY[]<5>", b"a FETCH 1 BODY[]<0.0>", b"a FETCH 1 BODY[MIME]", b"a FETCH 1 BODY[HEADER.FIELDS ()]",
    b"a FETCH 1 BODY[0]", b"a FETCH 1 BODY[1.HEADERS]", b"a FETCH 1 BODY.PEEK", b"a FETCH 1,,2 FLAGS",
    b"a FETCH 1:2: FLAGS", b"a FETCH 4294967296 FLAGS", b"a FETCH 1 (FLAGS", b"a FETCH 1 FLAGS)",
    b"a FETCH 1  FLAGS", b"a FETCH 99999999999999999999999 FLAGS",
    # digit strings past Python's int() limit (4300 digits) must not raise ValueError
    b"a FETCH " + b"7" * 5000 + b" FLAGS", b"a FETCH 1 BODY[]<" + b"7" * 5000 + b".1>",
    b"a FETCH 1 (FLAGS) (CHANGEDSINCE " + b"7" * 5000 + b")",
])
def test_fetch_bad_inputs_answer_bad_with_the_tag(line: bytes) -> None:
    assert bad(line).tag == "a"


# ---- STORE / COPY / MOVE / EXPUNGE ----------------------------------------------------

def test_store_forms() -> None:
    assert cmd(b"A003 STORE 2:4 +FLAGS (\\Deleted)").args == Store(seq((2, 4)), "add", False, ("\\Deleted",))
    assert cmd(b"a STORE 1 FLAGS ()").args == Store(seq((1, 1)), "set", False, ())
    assert cmd(b"a STORE 1 -flags.silent \\seen $Junk").args == Store(seq((1, 1)), "remove", True,
                                                                     ("\\Seen", "$Junk"))
    c = cmd(b"a103 UID STORE 6,4,8 (UNCHANGEDSINCE 12121230045) +FLAGS.SILENT (\\Deleted)")
    assert c.uid and c.args == Store(seq((6, 6), (4, 4), (8, 8)), "add", True, ("\\Deleted",), 12121230045)
    assert cmd(b"a STORE $ +FLAGS (x)").args.sequence.saved
    for line in (b"a STORE 1 FLAGS.LOUD (\\Seen)", b"a STORE 1 +FLAGS", b"a STORE 1 (FOO 1) FLAGS (x)",
                 b"a STORE 1 FLAGS (\\)", b"a STORE 1 FLAGS ((x))",
                 # \Recent belongs to the server (RFC 3501 §2.3.2); a flag-extension is not settable
                 b"a STORE 1 +FLAGS (\\Recent)", b"a STORE 1 +FLAGS \\Foo", b"a APPEND x (\\Foo) {0+}\r\n\r\n"):
        assert bad(line).tag == "a", line


def test_copy_move_uid_expunge() -> None:
    assert cmd(b"A003 COPY 2:4 MEETING").args == CopyMove(seq((2, 4)), "MEETING")
    c = cmd(b"a UID MOVE 42:69 foo")
    assert c.uid and c.name == "MOVE" and c.args == CopyMove(seq((42, 69)), "foo")
    c = cmd(b"A003 UID EXPUNGE 3000:3002")
    assert c.uid and c.name == "EXPUNGE" and c.args == UidExpunge(seq((3000, 3002)))
    assert cmd(b"a EXPUNGE").args == NoArgs()
    assert bad(b"a UID EXPUNGE").tag == "a"
    assert bad(b"a UID NOOP").tag == "a"
    assert bad(b"a UID").tag == "a"


def test_sequence_sets_star_and_saved() -> None:
    s = cmd(b"a FETCH 1,3:*,*:2,7 UID").args.sequence
    assert s == seq((1, 1), (3, None), (None, 2), (7, 7))
    assert s.normalized(10) == [(1, 10)]
    assert cmd(b"a FETCH $ (UID)").args.sequence == SequenceSet(saved=True)
    assert bad(b"a FETCH $,1 UID").tag == "a"


# ---- SEARCH / SORT / THREAD ---------------------------------------------------------

def test_search_rfc_examples() -> None:
    c = cmd(b'A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"')
    assert c.args == Search(K("AND", (K("FLAGGED"), K("SINCE", (dt.date(1994, 2, 1),)),
                                      K("NOT", (K("FROM", ("Smith",)),)))))
    assert cmd(b'A283 SEARCH TEXT "string not in mailbox"').args.key.args == (K("TEXT", ("string not in mailbox",)),)
    word = "некий".encode()
    c = cmd(b"A284 SEARCH CHARSET UTF-8 TEXT {%d}\r\n%s\r\n" % (len(word), word))
    assert c.args.charset == "UTF-8" and c.args.key.args == (K("TEXT", ("некий",)),)


def test_search_every_key() -> None:
    line = (b'a UID SEARCH ALL ANSWERED BCC b BEFORE 1-Feb-1994 BODY x CC c DELETED DRAFT FLAGGED FROM f '
            b'HEADER X-Spam yes KEYWORD $Junk LARGER 10 NEW NOT SEEN OLD ON "02-Mar-2001" OR SEEN UNSEEN RECENT '
            b'SEEN SENTBEFORE 1-Jan-2000 SENTON 1-Jan-2000 SENTSINCE 1-Jan-2000 SINCE 1-Jan-2000 SMALLER 5 '
            b'SUBJECT s TEXT t TO t UID 1:5 UNANSWERED UNDELETED UNDRAFT UNFLAGGED UNKEYWORD foo UNSEEN 1:* '
            b'MODSEQ 5 (ANSWERED DELETED) OLDER 60 YOUNGER 30')
    keys = cmd(line).args.key.args
    ops = [k.op for k in keys]
    assert ops[:4] == ["ALL", "ANSWERED", "BCC", "BEFORE"]
    assert K("HEADER", ("X-Spam", "yes")) in keys and K("KEYWORD", ("$Junk",)) in keys
    assert K("ON", (dt.date(2001, 3, 2),)) in keys and K("LARGER", (10,)) in keys
    assert K("OR", (K("SEEN"), K("UNSEEN"))) in keys
    assert K("SEQSET", (seq((1, None)),)) in keys and K("UID", (seq((1, 5)),)) in keys
    assert K("MODSEQ", (5, None, None)) in keys and K("AND", (K("ANSWERED"), K("DELETED"))) in keys
    assert ops[-2:] == ["OLDER", "YOUNGER"]
    assert len(keys) == 40


def test_search_nesting_not_or_parens_and_saved_result() -> None:
    c = cmd(b"a SEARCH OR (NOT SEEN FLAGGED) NOT OR DRAFT (UID 1:3 $) $")
    assert c.args.key == K("AND", (
        K("OR", (K("AND", (K("NOT", (K("SEEN"),)), K("FLAGGED"))),
                 K("NOT", (K("OR", (K("DRAFT"), K("AND", (K("UID", (seq((1, 3)),)),
                                                          K("SEQSET", (SequenceSet(saved=True),)))))),)))),
        K("SEQSET", (SequenceSet(saved=True),))))
    deep = b"a SEARCH " + b"(" * 60 + b"ALL" + b")" * 60
    assert cmd(deep).name == "SEARCH"
    assert bad(b"a SEARCH " + b"NOT " * 200 + b"ALL").tag == "a"  # bounded recursion
    assert bad(b"a SEARCH " + b"(" * 200 + b"ALL" + b")" * 200).tag == "a"


def test_search_modseq_entry_rfc7162() -> None:
    c = cmd(b'a SEARCH MODSEQ "/flags/\\\\draft" all 620162338')
    assert c.args.key.args == (K("MODSEQ", (620162338, "/flags/\\draft", "all")),)
    assert bad(b'a SEARCH MODSEQ "/flags/x" nobody 5').tag == "a"


def test_search_esearch_return_rfc4731_and_save_rfc5182() -> None:
    c = cmd(b'A282 SEARCH RETURN (MIN COUNT) FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"')
    assert c.args.ret == ("MIN", "COUNT")
    assert cmd(b"A283 SEARCH RETURN () FLAGGED").args.ret == ("ALL",)
    assert cmd(b"a SEARCH RETURN (SAVE) FLAGGED").args.ret == ("SAVE",)
    c = cmd(b"a UID SEARCH RETURN (ALL) CHARSET us-ascii SUBJECT x")
    assert c.args.ret == ("ALL",) and c.args.charset == "US-ASCII"
    assert bad(b"a SEARCH RETURN (PARTIAL) ALL").tag == "a"
    assert cmd(b"a SEARCH CHARSET {5}\r\nutf-8 ALL").args.charset == "UTF-8"  # RFC 3501: astring
    assert cmd(b'a SEARCH CHARSET "UTF-8" ALL').args.charset == "UTF-8"


def test_search_charsets_and_bad_inputs() -> None:
    b = bad(b"a SEARCH CHARSET KOI8-R ALL")
    assert (b.tag, b.status, b.code) == ("a", "NO", "BADCHARSET")  # RFC 9051 §6.4.4: NO [BADCHARSET]
    assert bad(b"a SEARCH CHARSET KOI8-R NOSUCHKEY").status == "BAD"  # a syntax error still wins
    # UTF-8 is a superset of US-ASCII: 8-bit text sent under US-ASCII is still searched for
    assert cmd(b"a SEARCH CHARSET US-ASCII TEXT {2}\r\n\xc3\xa9\r\n").args.key.args == (K("TEXT", ("\u00e9",)),)
    assert bad(b"a SEARCH TEXT {2}\r\n\xff\xfe\r\n").tag == "a"  # default UTF-8
    for line in (b"a SEARCH", b"a SEARCH FOO", b"a SEARCH SINCE 31-Feb-2020", b"a SEARCH SINCE 1-Foo-2020",
                 b"a SEARCH NOT", b"a SEARCH OR SEEN", b"a SEARCH ()", b"a SEARCH (SEEN", b"a SEARCH LARGER x",
                 b"a SEARCH HEADER Subject", b"a SEARCH KEYWORD \\Seen", b"a SEARCH CHARSET", b"a SEARCH 0"):
        assert bad(line).tag == "a", line


def test_sort_and_thread_rfc5256_examples() -> None:
    c = cmd(b"A282 SORT (SUBJECT) UTF-8 SINCE 1-Feb-1994")
    assert c.args == Sort((("SUBJECT", False),), "UTF-8", K("AND", (K("SINCE", (dt.date(1994, 2, 1),)),)))
    c = cmd(b"A283 UID SORT (SUBJECT REVERSE DATE) UTF-8 ALL")
    assert c.uid and c.args.criteria == (("SUBJECT", False), ("DATE", True))
    assert cmd(b'A284 SORT (SUBJECT) US-ASCII TEXT "not in mailbox"').args.charset == "US-ASCII"
    c = cmd(b"A283 THREAD ORDEREDSUBJECT UTF-8 SINCE 5-MAR-2000")
    assert c.args == Thread("ORDEREDSUBJECT", "UTF-8", K("AND", (K("SINCE", (dt.date(2000, 3, 5),)),)))
    assert cmd(b'A284 UID THREAD REFERENCES US-ASCII TEXT "gewp"').uid
    assert bad(b"a SORT (SUBJECT) ALL").tag == "a"  # charset is required
    assert bad(b"a SORT () UTF-8 ALL").tag == "a"
    assert bad(b"a SORT (COLOR) UTF-8 ALL").tag == "a"
    assert bad(b"a THREAD MAGIC UTF-8 ALL").tag == "a"
    assert bad(b"a THREAD REFERENCES KOI8-R ALL").code == "BADCHARSET"


# ---- QUOTA / SENDMAIL -----------------------------------------------------------

def test_quota_rfc9208() -> None:
    assert cmd(b'G0001 GETQUOTA "!partition/sda4"').args == GetQuota("!partition/sda4")
    assert cmd(b"A003 GETQUOTAROOT INBOX").args == MailboxArg("INBOX")
    assert cmd(b'S0000 SETQUOTA "#user/alice" (STORAGE 510)').args == SetQuota("#user/alice", (("STORAGE", 510),))
    assert cmd(b'a SETQUOTA "" ()').args == SetQuota("", ())
    assert bad(b'a SETQUOTA "" (STORAGE)').tag == "a"


def test_uid_sendmail() -> None:
    assert cmd(b"a UID SENDMAIL 7").args == UidSendmail(7)
    c = cmd(b'a UID SENDMAIL 7 (FROM "a@b.example" RECIPIENT c@d.example RECIPIENT e@f.example)')
    assert c.args == UidSendmail(7, "a@b.example", ("c@d.example", "e@f.example"))
    assert bad(b"a SENDMAIL 7").tag == "a"
    assert bad(b"a UID SENDMAIL x").tag == "a"
    assert bad(b"a UID SENDMAIL 7 (TO x)").tag == "a"


# ---- tags, commands, literals in odd places ------------------------------------------

def test_tags() -> None:
    assert cmd(b"]x.1 NOOP").tag == "]x.1"
    assert cmd(b"A-b_c~! NOOP").tag == "A-b_c~!"
    assert bad(b"+a NOOP").tag is None  # "+" is not a tag character
    assert bad(b"a*b NOOP").tag is None
    assert bad(b"(x NOOP").tag is None
    assert bad(b"a").tag == "a"
    assert bad(b"").tag is None
    assert bad(b"a FOO").tag == "a"


def test_literal_in_the_middle_of_a_line_is_bad() -> None:
    assert bad(b"a LOGIN {3} foo").tag == "a"


def test_zero_length_literals() -> None:
    assert cmd(b"a LOGIN {0}\r\n {0}\r\n\r\n").args == Login("", "")


def test_quoted_braces_are_not_literals() -> None:
    assert cmd(b'a LOGIN fred "{3}"').args == Login("fred", "{3}")
    assert cmd(b'a LOGIN fred "a\\" {3}"').args == Login("fred", 'a" {3}')


def test_bare_lf_line_ending_is_tolerated() -> None:
    assert cmd(b"a NOOP\n").name == "NOOP"
