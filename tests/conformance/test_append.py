"""APPEND family: MULTIAPPEND (RFC 3502), CATENATE (RFC 4469), UIDPLUS on COPY (RFC 4315), QUOTA (RFC 9208)."""

from __future__ import annotations

import re

import pytest

from tests.conformance.client import Lit, parse
from tests.conformance.conftest import Server

A = b"Subject: first\r\n\r\none\r\n"
B = b"Subject: second\r\n\r\ntwo\r\n"


def count(c, box: str) -> int:  # type: ignore[no-untyped-def]
    r = c.ok(f"STATUS {box} (MESSAGES)")
    return int(re.search(rb"MESSAGES (\d+)", r.lines("STATUS")[0]).group(1))  # type: ignore[union-attr]


def test_multiappend(server: Server) -> None:
    """RFC 3502 §3 / §6.3.11: one APPEND with several messages appends them in order, each with its own
    flags and date; APPENDUID names the UID set (RFC 4315 §3)."""
    _, c = server.session()
    c.ok("CREATE Multi")
    r = c.ok("APPEND Multi (\\Seen) ", Lit(A), " (\\Flagged) \"01-Jan-2021 00:00:00 +0000\" ", Lit(B))
    code = r.code() or ""
    assert code.startswith("APPENDUID "), r
    uids = code.split()[2]
    assert re.fullmatch(r"\d+:\d+|\d+,\d+", uids), code
    c.ok("SELECT Multi")
    r = c.ok("FETCH 1:2 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    lines = r.lines("FETCH")
    assert b"first" in lines[0] and b"\\Seen" in lines[0] and b"second" in lines[1] and b"\\Flagged" in lines[1]


@pytest.mark.parametrize(("box", "second"), [
    pytest.param("Atomic", ' "99-Foo-2021 00:00:00 +0000" ', id="bad-date"),
    pytest.param("Atomic2", " (\\Recent) ", id="recent-flag"),  # \Recent cannot be appended (RFC 3501 §2.3.2)
])
def test_multiappend_atomic(server: Server, box: str, second: str) -> None:
    """RFC 3502 §6.3.11: "If the server returns NO or BAD for any message, none of the messages are
    appended" -- a refused second message (a syntax error in its date, or the \\Recent flag) leaves
    the mailbox empty."""
    _, c = server.session()
    c.ok(f"CREATE {box}")
    r = c.cmd(f"APPEND {box} ", Lit(A), second, Lit(B))
    assert r.status in ("BAD", "NO"), r
    c.ok("NOOP")
    assert count(c, box) == 0


def test_append_to_missing_then_literal_plus(server: Server) -> None:
    """RFC 3501 §6.3.11 / RFC 7888 §4: APPEND with {n+} to a missing mailbox is NO [TRYCREATE] after the
    literal was read (nothing of it is taken for a command)."""
    _, c = server.session()
    r = c.cmd("APPEND Missing ", Lit(b"X-Evil: 1\r\n\r\nc99 LOGOUT\r\n", plus=True))
    assert r.status == "NO" and r.code() == "TRYCREATE"
    c.ok("NOOP")


def test_catenate_url_and_text(server: Server) -> None:
    """RFC 4469 §5: APPEND ... CATENATE (URL "..." TEXT {n}) builds one message from a part of an existing
    message (an IMAP URL, RFC 5092) and literal text."""
    _, c = server.session()
    c.append("INBOX", b"Subject: source\r\nFrom: a@example.test\r\n\r\nsource body\r\n")
    c.ok("SELECT INBOX")
    uid = int(re.search(rb"UID (\d+)", c.ok("FETCH 1 UID").lines("FETCH")[0]).group(1))  # type: ignore[union-attr]
    tail = b"added text\r\n"
    r = c.ok(f'APPEND INBOX CATENATE (URL "/INBOX/;UID={uid}/;SECTION=HEADER" TEXT ', Lit(tail), ")")
    assert (r.code() or "").startswith("APPENDUID")
    c.ok("NOOP")
    r = c.ok("FETCH 2 BODY.PEEK[]")
    body = parse(r.lines("FETCH")[0])[3][1]
    assert body == b"Subject: source\r\nFrom: a@example.test\r\n\r\n" + tail


def test_catenate_bad_url(server: Server) -> None:
    """RFC 4469 §5: a URL that names no message is NO [BADURL url] and nothing is appended."""
    _, c = server.session()
    r = c.cmd('APPEND INBOX CATENATE (URL "/INBOX/;UID=999999" TEXT ', Lit(b"x\r\n"), ")")
    assert r.status == "NO" and (r.code() or "").startswith("BADURL"), r
    assert count(c, "INBOX") == 0


def test_copy_copyuid(server: Server) -> None:
    """RFC 4315 §3: COPY answers OK [COPYUID uidvalidity src-uids dst-uids]; RFC 3501 §6.4.7 keeps flags
    and INTERNALDATE; COPY to a missing mailbox is NO [TRYCREATE]."""
    _, c = server.session()
    c.ok("CREATE Dst")
    c.append("INBOX", A, flags="\\Answered $Kw", date="05-May-2021 05:05:05 +0000")
    c.append("INBOX", B)
    c.ok("SELECT INBOX")
    r = c.ok("COPY 1:2 Dst")
    code = (r.code() or "").split()
    assert code[0] == "COPYUID" and len(code) == 4, r
    r = c.cmd("COPY 1 Nope")
    assert r.status == "NO" and r.code() == "TRYCREATE"
    c.ok("SELECT Dst")
    items = parse(c.ok("FETCH 1 (FLAGS INTERNALDATE)").lines("FETCH")[0])[3]
    assert {b"\\Answered", b"$Kw"} <= set(items[1]) and items[3] == b"05-May-2021 05:05:05 +0000"


def test_quota(server: Server) -> None:
    """RFC 9208 §4.2/§4.3 (RFC 2087): GETQUOTAROOT INBOX names the root(s) and their QUOTA with STORAGE
    usage in KiB; usage grows with an APPEND."""
    login = server.account()
    server.give_quota(login)
    c = server.connect(login)

    def usage() -> tuple[bytes, int]:
        r = c.ok("GETQUOTAROOT INBOX")
        (root_line,) = r.lines("QUOTAROOT")
        tok = parse(root_line)
        assert tok[2] == b"INBOX" and len(tok) >= 4
        (q,) = r.lines("QUOTA")
        qt = parse(q)
        res = qt[3]
        i = [x.upper() for x in res[::3]].index(b"STORAGE")
        return tok[3], int(res[3 * i + 1])

    root, before = usage()
    c.append("INBOX", b"Subject: big\r\n\r\n" + b"y" * 50_000 + b"\r\n")
    _, after = usage()
    assert after >= before + 48
    r = c.ok("GETQUOTA ", '"' + root.decode() + '"')
    assert r.lines("QUOTA")
