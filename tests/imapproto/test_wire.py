"""Serializer helpers: what the server writes must parse back to the same value."""

from __future__ import annotations

import calendar

import pytest

from services.access.imapproto import wire
from services.access.imapproto.parser import Command, CommandReader

from .helpers import one


def login_back(user: bytes) -> str:
    ev = one(b"a LOGIN " + user + b" pw\r\n")
    assert isinstance(ev, Command), ev
    return ev.args.user


@pytest.mark.parametrize("value", ["plain", "with space", 'q"uote', "back\\slash", "", "NIL", "x" * 1001,
                                   "line\r\nbreak", "caf\u00e9", "a]b", "{3}"])
def test_string_and_astring_round_trip_through_the_parser(value: str) -> None:
    assert login_back(wire.string(value)) == value
    assert login_back(wire.astring(value)) == value


def test_string_picks_quoted_or_literal() -> None:
    assert wire.string("abc") == b'"abc"'
    assert wire.string('a"b\\') == b'"a\\"b\\\\"'
    assert wire.string("a\r\nb") == b"{4}\r\na\r\nb"
    assert wire.string(b"a\x00b") == b"{3}\r\na\x00b"
    assert wire.string("caf\u00e9") == b"{5}\r\ncaf\xc3\xa9"
    assert wire.string("caf\u00e9", utf8=True) == b'"caf\xc3\xa9"'
    assert wire.string("x" * 1000).startswith(b'"') and wire.string("x" * 1001).startswith(b"{1001}")
    assert wire.nstring(None) == b"NIL" and wire.nstring("") == b'""'
    assert wire.astring("NIL") == b'"NIL"' and wire.astring("INBOX") == b"INBOX"
    assert wire.literal8(b"\x00") == b"~{1}\r\n\x00"
    with pytest.raises(ValueError):
        wire.quoted("a\nb")
    with pytest.raises(ValueError):
        wire.atom("a b")


def test_mailbox_names() -> None:
    assert wire.mailbox("inbox") == b"INBOX"
    assert wire.mailbox("Entw\u00fcrfe") == b"Entw&APw-rfe"
    assert wire.mailbox("Entw\u00fcrfe", utf8=True) == b'"Entw\xc3\xbcrfe"'
    assert wire.mailbox("a b&c") == b'"a b&-c"'
    r = CommandReader()
    for name in ("Entw\u00fcrfe", "a b&c", "[Gmail]/Sent Mail", "#news", "\u53f0\u5317"):
        ev = one(b"a SELECT " + wire.mailbox(name) + b"\r\n", r)
        assert isinstance(ev, Command) and ev.args.mailbox == name


def test_lines_and_codes() -> None:
    assert wire.tagged("a1", "ok", "LOGIN completed") == b"a1 OK LOGIN completed\r\n"
    assert wire.tagged(b"a1", b"NO", "over", "OVERQUOTA") == b"a1 NO [OVERQUOTA] over\r\n"
    assert wire.tagged("a", "BAD", "evil\r\ntext") == b"a BAD evil  text\r\n"  # never a broken line
    assert wire.untagged(b"3 EXISTS") == b"* 3 EXISTS\r\n"
    assert wire.continuation("Ready") == b"+ Ready\r\n"
    assert wire.capability_line(["IMAP4rev1", "LITERAL+"]) == b"* CAPABILITY IMAP4rev1 LITERAL+\r\n"


def test_flags_dates_sets() -> None:
    assert wire.flag_list(["\\Seen", "$Junk"]) == b"(\\Seen $Junk)"
    assert wire.flag_list([]) == b"()"
    ts = calendar.timegm((1994, 2, 8, 5, 52, 25, 0, 0, 0))
    assert wire.date_time(ts) == b'"08-Feb-1994 05:52:25 +0000"'
    assert wire.date_time(ts + 0.9) == b'"08-Feb-1994 05:52:25 +0000"'
    assert wire.seqset([1, 2, 3, 5, 7, 8, 10]) == b"1:3,5,7:8,10"
    assert wire.seqset([]) == b""
    assert wire.seqset([4]) == b"4"
