"""CommandReader framing: literals and the session's decisions, caps, raw lines, chunked input."""

from __future__ import annotations

import pytest

from services.access.imapproto.parser import Bad, Command, CommandReader, Fatal, NeedLiteral, RawLine
from services.access.imapproto.types import Login

from .helpers import drain, run


def test_sync_literal_waits_for_the_session_and_repeats_until_decided() -> None:
    r = CommandReader()
    r.feed(b"a LOGIN {4}\r\n")
    ev = r.next_event()
    assert ev == NeedLiteral("a", "LOGIN", 4, nonsync=False, binary=False)
    assert r.next_event() == ev  # still undecided
    r.accept_literal()
    assert r.next_event() is None  # the octets have not come yet
    r.feed(b"fr")
    assert r.next_event() is None
    r.feed(b"ed secret\r\n")
    assert r.next_event() == Command("a", "LOGIN", Login("fred", "secret"))
    assert r.next_event() is None
    assert r.buffered() == 0


def test_literal8_and_nonsync_flags_in_need_literal() -> None:
    r = CommandReader()
    evs = run(r, [b"a APPEND INBOX ~{3+}\r\nabc\r\n"])
    assert evs[0] == NeedLiteral("a", "APPEND", 3, nonsync=True, binary=True)
    assert isinstance(evs[1], Command)
    evs = run(r, [b"b UID COPY 1 {3}\r\nfoo\r\n"])
    assert evs[0] == NeedLiteral("b", "COPY", 3, nonsync=False, binary=False)


def test_refused_sync_literal_drops_the_command_and_the_next_one_is_read() -> None:
    r = CommandReader()
    r.feed(b"a APPEND INBOX {100000}\r\n")
    assert isinstance(r.next_event(), NeedLiteral)
    r.refuse_literal()  # the session answers "a NO [TOOBIG]"; the client does not send the octets
    r.feed(b"b NOOP\r\n")
    assert r.next_event() == Command("b", "NOOP")


def test_refused_nonsync_literal_is_read_and_thrown_away() -> None:
    r = CommandReader()
    r.feed(b"a APPEND INBOX {11+}\r\nhello\r\nb NO")
    assert isinstance(r.next_event(), NeedLiteral)
    r.refuse_literal()
    r.feed(b"OP (\\Seen) {3+}\r\nxyz\r\nc NOOP\r\n")  # the rest of the refused command, then the next one
    assert r.next_event() == Command("c", "NOOP")


def test_refused_nonsync_literal_over_the_discard_cap_is_fatal() -> None:
    r = CommandReader(max_literal_discard=1000)
    r.feed(b"a APPEND INBOX {5000+}\r\n")
    assert isinstance(r.next_event(), NeedLiteral)
    r.refuse_literal()
    assert isinstance(r.next_event(), Fatal)
    # 2 GB announced without waiting: over every cap, never buffered, never read
    r = CommandReader()
    r.feed(b"a APPEND INBOX {2000000000+}\r\n" + b"x" * 1000)
    assert r.next_event() == Fatal("Literal too big to skip")
    r.feed(b"b NOOP\r\n")
    assert isinstance(r.next_event(), Fatal)  # stays dead, buffers nothing
    assert r.buffered() == 0


def test_literal_over_max_literal_is_refused_by_the_reader() -> None:
    r = CommandReader(max_literal=100)
    evs = run(r, [b"a LOGIN {101}\r\n", b"b NOOP\r\n"])
    assert evs == [Bad("a", "Literal too big", "LIMIT"), Command("b", "NOOP")]
    # non-synchronizing: thrown away, then BAD, then the next command
    evs = run(r, [b"a LOGIN {101+}\r\n" + b"x" * 101 + b" pw\r\nb NOOP\r\n"])
    assert evs == [Bad("a", "Literal too big", "LIMIT"), Command("b", "NOOP")]


def test_append_literal_is_the_sessions_decision_up_to_max_command() -> None:
    r = CommandReader(max_literal=100, max_command=10_000)
    evs = run(r, [b"a APPEND INBOX {5000}\r\n"])
    assert evs == [NeedLiteral("a", "APPEND", 5000, False, False)]
    r = CommandReader(max_literal=100, max_command=10_000)
    evs = run(r, [b"a APPEND INBOX {20000}\r\n"])
    assert evs == [Bad("a", "Literal too big", "TOOBIG", "NO")]  # RFC 7889 §4: NO [TOOBIG]
    # the whole command counts: two literals that together pass max_command
    r = CommandReader(max_command=10_000)
    evs = run(r, [b"a APPEND INBOX {6000}\r\n", b"x" * 6000 + b" {6000}\r\n"])
    assert evs[-1] == Bad("a", "Literal too big", "TOOBIG", "NO")


def test_literal_minus_refuses_nonsync_over_4096() -> None:
    r = CommandReader(max_command=1 << 20, max_literal=1 << 20)
    r.literal_minus = True
    evs = run(r, [b"a APPEND INBOX {4097+}\r\n" + b"x" * 4097 + b"\r\nb NOOP\r\n"])
    assert evs == [Bad("a", "Non-synchronizing literal over 4096 octets", "TOOBIG"), Command("b", "NOOP")]
    evs = run(r, [b"a APPEND INBOX {4096+}\r\n" + b"x" * 4096 + b"\r\n"])
    assert isinstance(evs[-1], Command)
    evs = run(r, [b"a APPEND INBOX {5000}\r\n"])  # a synchronizing one of any size is fine
    assert isinstance(evs[0], NeedLiteral)


def test_unknown_command_or_missing_tag_with_literal_is_refused_before_the_octets() -> None:
    assert run(CommandReader(), [b"a FROB {5}\r\n"]) == [Bad("a", "Unknown command")]
    assert run(CommandReader(), [b"+ LOGIN {5}\r\n"]) == [Bad(None, "Missing or invalid tag")]
    evs = run(CommandReader(), [b"a FROB {5+}\r\nhello\r\nb NOOP\r\n"])
    assert evs == [Bad("a", "Unknown command"), Command("b", "NOOP")]


def test_overlong_line_is_bad_with_the_tag_and_the_reader_resynchronises() -> None:
    r = CommandReader(max_line=100)
    evs = run(r, [b"a1 SEARCH " + b"SEEN " * 100, b"SEEN\r\nb NOOP\r\n"])
    assert evs == [Bad("a1", "Line too long"), Command("b", "NOOP")]
    assert r.buffered() == 0


def test_overlong_tag_gives_the_same_answer_however_the_line_arrives() -> None:
    """Found by atheris: a tag longer than max_line was read whole from one big read but not from
    small ones.  Only the first max_line octets count now."""
    data = b"x" * 300 + b" NOOP\r\nb NOOP\r\n"
    whole = run(CommandReader(max_line=256), [data])
    assert whole == [Bad(None, "Line too long"), Command("b", "NOOP")]
    assert run(CommandReader(max_line=256), [data[i:i + 2] for i in range(0, len(data), 2)]) == whole


def test_overlong_line_ending_in_a_nonsync_literal_skips_the_literal_too() -> None:
    r = CommandReader(max_line=50)
    evs = run(r, [b"a LOGIN " + b"x" * 100 + b" {5+}\r\nhello\r\nb NOOP\r\n"])
    assert evs == [Bad("a", "Line too long"), Command("b", "NOOP")]


def test_endless_line_is_fatal_and_memory_stays_bounded() -> None:
    r = CommandReader(max_line=100, max_command=10_000)
    for _ in range(50):
        r.feed(b"y" * 1000)
        ev = r.next_event()
        assert r.buffered() <= 1000
        if ev is not None:
            break
    assert isinstance(ev, Fatal)


def test_command_over_max_command_across_continuation_lines() -> None:
    r = CommandReader(max_line=1000, max_command=1500)
    evs = run(r, [b"a LOGIN {900}\r\n", b"x" * 900 + b" " + b"y" * 700 + b"\r\n", b"b NOOP\r\n"])
    assert evs[1:] == [Bad("a", "Command too long", "LIMIT"), Command("b", "NOOP")]


def test_read_line_for_authenticate_and_idle() -> None:
    r = CommandReader()
    r.feed(b"a AUTHENTICATE PLAIN\r\nAGZyZWQAc2VjcmV0\r\nb IDLE\r\nDONE\r\nc NOOP\r\n")
    assert r.next_event().name == "AUTHENTICATE"
    r.read_line()
    assert r.next_event() == RawLine(b"AGZyZWQAc2VjcmV0")
    assert r.next_event().name == "IDLE"
    r.read_line()
    assert r.next_event() == RawLine(b"DONE")
    assert r.next_event() == Command("c", "NOOP")


def test_read_line_is_bounded_too() -> None:
    r = CommandReader(max_line=10)
    r.read_line()
    evs = run(r, [b"x" * 50 + b"\r\nb NOOP\r\n"])
    assert evs == [Bad(None, "Line too long"), Command("b", "NOOP")]


def test_pipelined_commands_in_one_feed() -> None:
    r = CommandReader()
    evs = run(r, [b"a NOOP\r\nb LOGIN {1+}\r\nu p\r\nc CAPABILITY\r\nd FOO\r\n"])
    assert [type(e).__name__ for e in evs] == ["Command", "NeedLiteral", "Command", "Command", "Bad"]
    assert evs[2] == Command("b", "LOGIN", Login("u", "p"))


STREAM = (b"a1 LOGIN {4}\r\nfred {6+}\r\nsecret\r\n"
          b"a2 APPEND INBOX (\\Seen) ~{5}\r\nab\r\nc\r\n"
          b"a3 UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (From To)]<0.100>)\r\n"
          b"a4 SEARCH CHARSET UTF-8 SUBJECT {2}\r\n\xc3\xa9\r\n"
          b"a5 BOGUS\r\n")


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_chunking_does_not_change_the_result(size: int) -> None:
    whole = run(CommandReader(), [STREAM])
    chunks = [STREAM[i:i + size] for i in range(0, len(STREAM), size)]
    assert run(CommandReader(), chunks) == whole
    assert [type(e).__name__ for e in whole].count("Command") == 4


def test_accept_without_pending_literal_is_a_programming_error() -> None:
    r = CommandReader()
    with pytest.raises(RuntimeError):
        r.accept_literal()
    with pytest.raises(RuntimeError):
        r.refuse_literal()


def test_drain_helper_stops_at_fatal() -> None:
    r = CommandReader(max_line=10, max_command=20)
    out: list[object] = []
    r.feed(b"z" * 100)
    drain(r, out)
    assert out == [Fatal("Line too long")]
