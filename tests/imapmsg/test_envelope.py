"""ENVELOPE: RFC 9051 §7.5.2 fields, RFC 5322 group syntax, odd addresses."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.access.imapmsg import envelope, quote
from services.access.imapmsg.envelope import _plain_addresses, parse_addresses, parse_addresses_full, write_addresses


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def addrs(value: str) -> bytes:
    return write_addresses(parse_addresses(value.encode("utf-8")))


def test_rfc9051_fetch_example_envelope() -> None:
    # The header behind RFC 9051 §6.4.5's FETCH example response.
    msg = crlf("""Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)
From: Terry Gray <gray@cac.washington.edu>
Subject: IMAP4rev2 WG mtg summary and minutes
To: imap@cac.washington.edu
Cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>
Message-Id: <B27397-0100000@cac.washington.edu>
MIME-Version: 1.0
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII

body
""")
    assert envelope(msg) == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev2 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) (("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) ((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) NIL NIL '
        b'"<B27397-0100000@cac.washington.edu>")')


def test_empty_group_is_start_and_end_marker() -> None:
    assert addrs("undisclosed-recipients:;") == b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))'


def test_group_with_members_between_markers() -> None:
    assert addrs('Team: a@b.example, "Bob X" <bob@c.example>;, carol@d.example') == (
        b'((NIL NIL "Team" NIL)(NIL NIL "a" "b.example")("Bob X" NIL "bob" "c.example")(NIL NIL NIL NIL)'
        b'(NIL NIL "carol" "d.example"))')


def test_two_groups_in_one_field() -> None:
    assert addrs("Friends: ;, Others: dave@example.com;") == (
        b'((NIL NIL "Friends" NIL)(NIL NIL NIL NIL)(NIL NIL "Others" NIL)(NIL NIL "dave" "example.com")'
        b'(NIL NIL NIL NIL))')


def test_unterminated_group_still_gets_its_end_marker() -> None:
    assert addrs("Group: a@b.c") == b'((NIL NIL "Group" NIL)(NIL NIL "a" "b.c")(NIL NIL NIL NIL))'


def test_rfc5322_appendix_group_with_comments() -> None:
    value = ("A Group(Some people)\r\n     :Chris Jones <c@(Chris's host.)public.example>,\r\n"
             "         joe@example.org,\r\n  John <jdoe@one.test> (my dear friend); (the end of the group)")
    assert addrs(value) == (
        b'((NIL NIL "A Group" NIL)("Chris Jones" NIL "c" "public.example")(NIL NIL "joe" "example.org")'
        b'("John" NIL "jdoe" "one.test")(NIL NIL NIL NIL))')


def test_route_addr() -> None:
    assert addrs("Route <@relay1.example,@relay2.example:user@final.example>") == (
        b'(("Route" "@relay1.example,@relay2.example" "user" "final.example"))')


def test_quoted_local_part_and_quoted_display_name() -> None:
    assert addrs('"john doe"@example.com, "Doe, John" <john@example.com>') == (
        b'((NIL NIL "john doe" "example.com")("Doe, John" NIL "john" "example.com"))')
    assert addrs(r'"a\"b"@example.com') == b'((NIL NIL "a\\"b" "example.com"))'


def test_trailing_comment_is_the_name_but_leading_is_not() -> None:
    assert addrs("john@example.com (John Doe)") == b'(("John Doe" NIL "john" "example.com"))'
    assert addrs("(only a comment) x@example.com") == b'((NIL NIL "x" "example.com"))'
    assert addrs("a@example.com (x) (y)") == b'(("y" NIL "a" "example.com"))'
    assert addrs("Mary (the boss) <mary@example.com>") == b'(("Mary" NIL "mary" "example.com"))'


def test_missing_domain_and_mailbox_are_filled_not_nil() -> None:
    # A NIL host would read as a group marker (RFC 9051 §7.5.2); Dovecot fills them in.
    assert addrs("user") == b'((NIL NIL "user" "MISSING_DOMAIN"))'
    assert addrs("<localonly>") == b'((NIL NIL "localonly" "MISSING_DOMAIN"))'
    assert addrs("<>") == b'((NIL NIL "MISSING_MAILBOX" "MISSING_DOMAIN"))'
    assert addrs("John Doe") == b'(("John Doe" NIL "MISSING_MAILBOX" "MISSING_DOMAIN"))'


def test_empty_list_elements() -> None:
    assert addrs("a@b.c,") == b'((NIL NIL "a" "b.c"))'
    assert addrs(",a@b.c") == b'((NIL NIL "MISSING_MAILBOX" "MISSING_DOMAIN")(NIL NIL "a" "b.c"))'


def test_encoded_words_are_sent_undecoded() -> None:
    assert addrs("=?ISO-8859-1?Q?Andr=E9?= Pirard <PIRARD@vm1.ulg.ac.be>") == (
        b'(("=?ISO-8859-1?Q?Andr=E9?= Pirard" NIL "PIRARD" "vm1.ulg.ac.be"))')
    msg = crlf("Subject: =?UTF-8?B?SGVsbG8gV8O2cmxk?=\n\nx\n")
    assert envelope(msg).startswith(b'(NIL "=?UTF-8?B?SGVsbG8gV8O2cmxk?=" NIL')


def test_eight_bit_header_values_are_literals() -> None:
    msg = crlf("From: Jörg Müller <joerg@example.com>\nSubject: Grüße\n\nx\n")
    env = envelope(msg)
    assert env.startswith(b"(NIL {7}\r\nGr\xc3\xbc\xc3\x9fe ((")
    assert b"({13}\r\nJ\xc3\xb6rg M\xc3\xbcller NIL \"joerg\" \"example.com\")" in env


def test_subject_folding_is_collapsed_for_humans() -> None:
    msg = crlf("Subject: this subject\n is folded over\n  two lines\n\nx\n")
    assert envelope(msg) == b"(NIL {37}\r\nthis subject is folded over two lines NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_quotes_in_subject_use_a_literal() -> None:
    msg = crlf('Subject: He said "hi"\n\nx\n')
    assert envelope(msg).startswith(b'(NIL {12}\r\nHe said "hi" NIL')


def test_sender_and_reply_to_default_to_from() -> None:
    msg = crlf("From: A <a@example.com>\nSender:\nTo: b@example.com\n\nx\n")
    assert envelope(msg) == (b'(NIL NIL (("A" NIL "a" "example.com")) (("A" NIL "a" "example.com")) '
                             b'(("A" NIL "a" "example.com")) ((NIL NIL "b" "example.com")) NIL NIL NIL NIL)')


def test_explicit_sender_reply_to_bcc_in_reply_to() -> None:
    msg = crlf("From: a@x.example\nSender: s@x.example\nReply-To: r@x.example\nBcc: h@x.example\n"
               "In-Reply-To: <p@x.example>\nMessage-ID: <m@x.example>\n\nx\n")
    assert envelope(msg) == (b'(NIL NIL ((NIL NIL "a" "x.example")) ((NIL NIL "s" "x.example")) '
                             b'((NIL NIL "r" "x.example")) NIL NIL ((NIL NIL "h" "x.example")) '
                             b'"<p@x.example>" "<m@x.example>")')


def test_empty_fields_and_missing_fields() -> None:
    assert envelope(crlf("From:\nTo:\nSubject:\nDate:\nMessage-ID:\n\nbody\n")) == b'("" "" NIL NIL NIL NIL NIL NIL NIL "")'
    assert envelope(crlf("X-Other: 1\n\nbody\n")) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_duplicate_fields_last_string_wins_addresses_accumulate() -> None:
    msg = crlf("Subject: first\nTo: one@example.com\nTo: two@example.com\nSubject: second\n\nx\n")
    assert envelope(msg) == (b'(NIL "second" NIL NIL NIL ((NIL NIL "one" "example.com")(NIL NIL "two" "example.com")) '
                             b'NIL NIL NIL NIL)')


def test_header_without_body_and_bare_lf() -> None:
    assert envelope(b"Subject: only a header\nFrom: a@b.c") == (
        b'(NIL "only a header" ((NIL NIL "a" "b.c")) ((NIL NIL "a" "b.c")) ((NIL NIL "a" "b.c")) NIL NIL NIL NIL NIL)')


# --- the fast path for plain addresses must answer exactly what the full parser answers ---------

_ATOMS = st.sampled_from(["a", "Ann", "b.c", "x-y", "q'r", "Z9", ".", "..", "a.", "é", "~"])
_SPACE = st.sampled_from(["", " ", "  ", "\t", "\r\n ", " \r\n\t"])


@st.composite
def _address_lists(draw: st.DrawFn) -> bytes:
    """Address lists mostly of the plain shapes, with the spacing and odd bytes that must send them
    to the full parser (double spaces, folding, 8-bit text, empty elements, dots in odd places)."""
    items = []
    for _ in range(draw(st.integers(1, 4))):
        lp = draw(_ATOMS) + draw(st.sampled_from(["", ".", ".x", ".."])) + draw(_ATOMS)
        dom = draw(_ATOMS) + draw(st.sampled_from([".net", "", ".", ".a.b"]))
        words = draw(st.lists(_ATOMS, max_size=3))
        name = draw(_SPACE).join(words)
        shape = draw(st.sampled_from(["name-addr", "angle", "bare", "junk", "empty"]))
        if shape == "name-addr":
            item = f"{name}{draw(_SPACE)}<{lp}@{dom}>"
        elif shape == "angle":
            item = f"<{lp}@{dom}>"
        elif shape == "bare":
            item = f"{lp}@{dom}"
        elif shape == "junk":
            item = draw(st.text(alphabet="ab <>@.,\t", max_size=10))
        else:
            item = ""
        items.append(draw(_SPACE) + item + draw(_SPACE))
    return ",".join(items).encode("utf-8")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_address_lists())
def test_plain_address_fast_path_matches_the_full_parser(value: bytes) -> None:
    assert parse_addresses(value) == parse_addresses_full(value)


def test_fast_path_covers_the_common_header_shapes() -> None:
    # The shapes real mail carries take the fast path (else it would be dead code with no gain).
    for value in (b"Sender 5 <sender5@example.net>", b"bench@example.test", b"<a@b.c>",
                  b"A <a@b>, c@d,\r\n E F <e@f.g>"):
        assert _plain_addresses(value) == parse_addresses_full(value)
    # Quotes, comments, groups and 8-bit text always go to the full parser.
    for value in (b'"Ann" <a@b>', b"a@b (Ann)", b"g: a@b;", "Zoë <z@b>".encode()):
        assert _plain_addresses(value) is None
    assert addrs("John Q. Public <jqp@example.com>") == b'(("John Q. Public" NIL "jqp" "example.com"))'


_TEXT_BYTES = st.lists(st.sampled_from([b"a", b"Re:", b" ", b"  ", b"\t", b"\r\n", b'"', b"\\", b"\x00", b"\xc3\xa9",
                                        b"=?utf-8?q?x?=", b"(", b"<", b"@"]), max_size=12).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(_TEXT_BYTES)
def test_quoting_fast_paths_match_the_general_rules(value: bytes) -> None:
    # nstring/humans quote plain text directly; the answer must be what the byte-by-byte rules give.
    assert quote.nstring(value) == quote._nstring_general(value)
    assert quote.humans(value) == quote._humans_general(value)


def test_quoting_of_plain_and_odd_text() -> None:
    assert quote.humans(b"benchmark message number 7") == b'"benchmark message number 7"'
    assert quote.humans(b" two  spaces ") == b"{10}\r\ntwo spaces"
    assert quote.nstring(b"<bench.7@example.net>") == b'"<bench.7@example.net>"'
    assert quote.nstring(b'say "hi"') == b'"say \\"hi\\""'
