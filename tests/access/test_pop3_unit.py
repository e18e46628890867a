"""POP3 pieces without a box: the command parser, the streamed message encoding, the session on random input.

Property tests (hypothesis) are bounded: a few hundred examples each, well under 20 s together.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport

from appliance.mailstore import MailStore, MailstoreError, crlf
from services.access.backend import Backend
from services.access.pop3.commands import (
    MAX_COMMAND_LINE,
    TOO_LONG,
    Command,
    Invalid,
    SaslError,
    decode_base64,
    parse,
    plain_credentials,
)
from services.access.pop3.framing import LineFramer
from services.access.pop3.maildrop import Maildrop
from services.access.pop3.server import POP3Server
from services.access.pop3.wire import MessageEncoder, encode_message
from tests.ratelimit.conftest import make_config

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# --- the parser -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line,expected",
    [
        (b"stat", Command("STAT")),
        (b"NOOP ignored args", Command("NOOP")),
        (b"LIST", Command("LIST")),
        (b"list 3", Command("LIST", ("3",), 3)),
        (b"TOP 2 0", Command("TOP", ("2", "0"), 2, 0)),
        (b"PASS pass word with spaces", Command("PASS", ("pass word with spaces",))),
        (b"AUTH PLAIN AGFsaWNlAHB3", Command("AUTH", ("PLAIN", "AGFsaWNlAHB3"))),
        (b"XTND XMIT", Command("XTND", ("XMIT",))),
    ],
)
def test_commands_parse(line: bytes, expected: Command) -> None:
    assert parse(line) == expected


@pytest.mark.parametrize(
    "line,fragment",
    [
        (b"", "Unknown command"),
        (b"XYZZY", "Unknown command"),
        (b"APOP alice 0123", "Unknown command"),  # no shared secrets here
        (b"RETR", "needs a message number"),
        (b"RETR x", "Invalid message number: x"),
        (b"RETR -1", "Invalid message number"),
        (b"DELE 1 2", "Too many arguments"),
        (b"TOP 1", "needs a message number and a line count"),
        (b"TOP 1 -1", "Invalid line count"),
        (b"LIST 99999999999", "Invalid message number"),
        (b"USER", "needs an argument"),
        (b"NOOP " + b"x" * 300, "too long"),
    ],
)
def test_bad_commands_say_why(line: bytes, fragment: str) -> None:
    result = parse(line)
    assert isinstance(result, Invalid) and fragment in result.text


def test_command_line_limit_is_255_octets_with_crlf() -> None:
    assert isinstance(parse(b"USER " + b"a" * (MAX_COMMAND_LINE - 7)), Command)
    assert isinstance(parse(b"USER " + b"a" * (MAX_COMMAND_LINE - 6)), Invalid)


def test_sasl_plain() -> None:
    assert plain_credentials(decode_base64("AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=")) == ("alice@example.test", "secret")
    assert plain_credentials(b"alice\0alice\0pw") == ("alice", "pw")  # authzid = own login is fine
    for bad in (b"alice\0pw", b"\0\0pw", b"bob\0alice\0pw", b"\0\xff\0pw"):
        with pytest.raises(SaslError):
            plain_credentials(bad)
    with pytest.raises(SaslError, match="base64"):
        decode_base64("not base64!")
    assert decode_base64("=") == b""


@PROPS
@given(st.binary(max_size=400))
def test_parser_never_raises(line: bytes) -> None:
    assert isinstance(parse(line), Command | Invalid)


# --- the message encoding (RETR/TOP) -----------------------------------------------------------


def _reference(data: bytes, body_lines: int | None = None) -> bytes:
    """RFC 1939 §3 and §7 spelled out line by line, on the whole message at once."""
    text = crlf(data)
    lines = text.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if body_lines is not None:
        try:
            blank = lines.index(b"")
            lines = lines[:blank + 1 + body_lines]
        except ValueError:
            pass
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines) + b".\r\n"


@pytest.mark.parametrize(
    "data,top,expected",
    [
        (b"Subject: a\n\n.dot\n..two\nend", None, b"Subject: a\r\n\r\n..dot\r\n...two\r\nend\r\n.\r\n"),
        (b".first\r\n", None, b"..first\r\n.\r\n"),
        (b"", None, b".\r\n"),
        (b"H: 1\n\nl1\nl2\nl3\n", 0, b"H: 1\r\n\r\n.\r\n"),
        (b"H: 1\n\nl1\nl2\nl3\n", 2, b"H: 1\r\n\r\nl1\r\nl2\r\n.\r\n"),
        (b"H: 1\n\nl1\n", 5, b"H: 1\r\n\r\nl1\r\n.\r\n"),
        (b"H: 1\nH: 2\n", 0, b"H: 1\r\nH: 2\r\n.\r\n"),  # no body at all: the whole header
        (b"a\rb\n", None, b"a\rb\r\n.\r\n"),  # a lone CR stays, as the index counts it
    ],
)
def test_message_encoding(data: bytes, top: int | None, expected: bytes) -> None:
    assert encode_message(data, top) == expected == _reference(data, top)


@PROPS
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"x", b"Subject: s", b"", b" "]), max_size=60),
       st.integers(1, 7), st.one_of(st.none(), st.integers(0, 5)))
def test_chunked_encoding_equals_the_whole(parts: list[bytes], chunk: int, top: int | None) -> None:
    data = b"".join(parts)
    enc = MessageEncoder(top)
    out = b"".join(enc.encode(data[i:i + chunk]) for i in range(0, len(data), chunk)) + enc.finish()
    assert out == _reference(data, top)
    if top is None:  # unstuffed, RETR sends the octets the index counts (LIST), plus a final CRLF if missing
        body = (b"\r\n" + out.removesuffix(b".\r\n")).replace(b"\r\n..", b"\r\n.")[2:]
        whole = crlf(data)
        assert body == whole + (b"\r\n" if whole and not whole.endswith(b"\r\n") else b"")


# --- the session on random input ----------------------------------------------------------------

_VERBS = [b"USER", b"PASS", b"AUTH", b"AUTH PLAIN", b"CAPA", b"STLS", b"STAT", b"LIST", b"UIDL", b"RETR", b"TOP",
          b"DELE", b"RSET", b"NOOP", b"XTND XMIT", b"XTND", b"QUIT", b"APOP", b"LAST", b"list", b"top"]
_line = st.one_of(
    st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")),
    st.tuples(st.sampled_from(_VERBS), st.text(max_size=20).map(str.encode)).map(
        lambda t: (t[0] + b" " + t[1]).replace(b"\n", b"").replace(b"\r", b"")),
)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Backend:
    return Backend.from_config(make_config(Path(tmp_path_factory.mktemp("pop3unit"))))


def _session(backend: Backend, tls: bool) -> tuple[POP3Server, StringTransport]:
    s = POP3Server(backend, None, implicit_tls=tls)
    t = StringTransport(peerAddress=None)
    s.makeConnection(t)
    s.setTimeout(None)
    assert t.value() == b"+OK POP3 ready\r\n"
    t.clear()
    return s, t


def _check_replies(lines: list[bytes], out: bytes) -> None:
    """One status line per command up to QUIT, multi-line bodies only after +OK to CAPA and a bare AUTH."""
    replies = out.split(b"\r\n")
    assert replies.pop() == b""
    for line in lines:
        assert replies, f"no reply to {line!r}"
        status = replies.pop(0)
        assert status.startswith((b"+OK", b"-ERR")), (line, status)
        assert b"Internal error" not in status, line
        verb = line.split(b" ")[0].upper()
        if status.startswith(b"+OK") and (verb == b"CAPA" or line.upper() == b"AUTH"):
            while replies.pop(0) != b".":
                pass
        if verb == b"QUIT":
            break
        if replies and replies[0] == b"-ERR Too many invalid bad commands.":
            replies.pop(0)  # and the server hung up: nothing after it is answered
            break
    assert not replies, f"unexpected output {replies!r}"


@PROPS
@given(st.lists(_line, max_size=12))
def test_session_answers_every_line_before_login(backend: Backend, lines: list[bytes]) -> None:
    s, t = _session(backend, tls=False)
    s.dataReceived(b"".join(ln + b"\r\n" for ln in lines))  # one packet: PIPELINING
    _check_replies(lines, t.value())
    s.connectionLost()


@PROPS
@given(st.lists(_line.filter(lambda ln: not ln.upper().startswith((b"PASS", b"AUTH"))), max_size=12))
def test_session_answers_every_line_over_tls_without_logging_in(backend: Backend, lines: list[bytes]) -> None:
    s, t = _session(backend, tls=True)
    for ln in lines:  # one line per packet this time, some split in two
        s.dataReceived(ln[:3])
        s.dataReceived(ln[3:] + b"\r\n")
    _check_replies(lines, t.value())
    s.connectionLost()


def test_three_unknown_commands_in_a_row_before_login_end_the_session(backend: Backend) -> None:
    s, t = _session(backend, tls=False)
    s.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nCAPA\r\nSTAT\r\nAccept: */*\r\n\r\nNOOP\r\n")
    out = t.value().split(b"\r\n")
    assert [ln[:4] for ln in out[:2]] == [b"-ERR", b"-ERR"] and out[2] == b"+OK Capability list follows"
    after_capa = out[out.index(b".") + 1:]
    # STAT, "Accept: */*" and the empty line: the third in a row ends it, NOOP is not answered.
    assert [ln[:4] for ln in after_capa[:3]] == [b"-ERR"] * 3
    assert after_capa[3:] == [b"-ERR Too many invalid bad commands.", b""] and t.disconnecting
    s.connectionLost()


def test_overlong_line_is_refused_and_the_session_goes_on(backend: Backend) -> None:
    s, t = _session(backend, tls=False)
    s.dataReceived(b"NOOP " + b"x" * 10_000)
    s.dataReceived(b"y" * 10_000 + b"\r\nCAPA\r\n")
    out = t.value().split(b"\r\n")
    assert out[0].startswith(b"-ERR Command line too long") and out[1] == b"+OK Capability list follows"
    s.connectionLost()


# --- the maildrop on a real store ----------------------------------------------------------------


def _store_with(tmp_path: Path, messages: list[bytes]) -> Path:
    root = tmp_path / "maildir"
    MailStore.open(root).close()
    for i, data in enumerate(messages):
        (root / "new" / f"1764590000.M{i}P1.unit").write_bytes(data)
    return root


def _read(drop: Maildrop, n: int, top: int | None = None) -> bytes:
    reader = drop.open_message(n, top)
    out = b""
    while (piece := reader.next_chunk()) is not None:
        out += piece
    return out


def test_unique_ids_survive_a_lost_index(tmp_path: Path) -> None:
    root = _store_with(tmp_path, [b"Subject: %d\n\nbody\n" % i for i in range(5)])
    store = MailStore.open(root)
    first = Maildrop.open(lambda: store)
    ids = [first.unique_id(n) for n in range(1, 6)]
    assert len(set(ids)) == 5 and all(len(u) == 16 for u in ids)
    first.update({2}, {1})  # one deleted, one retrieved: the survivors keep their ids
    store.close()
    for f in root.glob("appliance-index.sqlite*"):
        f.unlink()
    store = MailStore.open(root)  # rebuilt from the Maildir file names
    again = Maildrop.open(lambda: store)
    assert [again.unique_id(n) for n in range(1, 5)] == [ids[0], *ids[2:]]
    assert "\\Seen" in again.mailbox.records([again.uids[0]])[0].flags  # RETR'd, as Dovecot marks it
    store.close()


def test_a_message_expunged_by_another_session(tmp_path: Path) -> None:
    root = _store_with(tmp_path, [b"Subject: a\n\none\n", b"Subject: b\n\ntwo\n"])
    store = MailStore.open(root)
    drop = Maildrop.open(lambda: store)
    assert _read(drop, 2) == b"Subject: b\r\n\r\ntwo\r\n.\r\n"
    store.mailbox("INBOX").expunge([drop.uids[0]])  # e.g. an IMAP client, while POP3 has its snapshot
    with pytest.raises(MailstoreError):
        drop.open_message(1, None)
    assert len(drop) == 2 and drop.sizes[0] == len(b"Subject: a\r\n\r\none\r\n")  # numbers stay as they were
    assert drop.update({1, 2}, set()) == []  # both gone afterwards, whoever removed them
    assert list(store.mailbox("INBOX").state().uids) == []
    store.close()


# --- framing ---------------------------------------------------------------------------------------


def _frame_all(framer: LineFramer, limit: int) -> list[bytes]:
    out = []
    while (line := framer.next_line(limit)) is not None:
        out.append(b"<too long>" if line is TOO_LONG else line)
    return out


@PROPS
@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30),
       st.lists(st.integers(1, 50), min_size=1, max_size=10), st.integers(8, 30))
def test_framing_is_independent_of_packet_boundaries(lines: list[bytes], cuts: list[int], limit: int) -> None:
    data = b"".join(ln + b"\r\n" for ln in lines)
    expected = [ln if len(ln) + 2 <= limit else b"<too long>" for ln in lines]
    framer, got, pos, i = LineFramer(), [], 0, 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        framer.feed(data[pos:pos + step])
        pos, i = pos + step, i + 1
        got += _frame_all(framer, limit)
        assert framer.buffered() <= max(limit, 50) + 2  # never more than one line's worth is held
    assert got == expected
