"""Wire-level behaviour where clients hang: pipelining, literals everywhere, long lines, IDLE edges."""

from __future__ import annotations

from tests.conformance.client import Lit
from tests.conformance.conftest import PASSWORD, Server


def test_pipelined_commands(server: Server) -> None:
    """RFC 3501 §5.5: a client may send several commands without waiting; each gets its tagged answer,
    in order for commands that depend on each other."""
    _, c = server.session()
    c.append("INBOX", b"Subject: p\r\n\r\nx\r\n")
    tags = [f"p{i}" for i in range(20)]
    cmds = [b"p0 SELECT INBOX"] + [b"%s FETCH 1 (FLAGS UID)" % t.encode() for t in tags[1:19]] + [b"p19 NOOP"]
    c.send(b"\r\n".join(cmds) + b"\r\n")
    for t in tags:
        assert c.finish(t).status == "OK", t


def test_login_with_literals(server: Server) -> None:
    """RFC 3501 §6.2.3 / §4.3: LOGIN's arguments may be synchronizing literals."""
    login = server.account()
    c = server.connect()
    r = c.cmd("LOGIN ", Lit(login.encode()), " ", Lit(PASSWORD.encode()))
    assert r.status == "OK", r
    c.ok("SELECT INBOX")


def test_bad_login_then_good(server: Server) -> None:
    """RFC 3501 §6.2.3: a failed LOGIN is NO and the client may try again on the same connection."""
    login = server.account()
    c = server.connect()
    assert c.cmd(f'LOGIN "{login}" "wrong password"', timeout=20).status == "NO"
    c.ok(f'LOGIN "{login}" "{PASSWORD}"')


def test_authenticate_plain_sasl_ir(server: Server) -> None:
    """RFC 4959 / RFC 4616 / RFC 3501 §6.2.2: AUTHENTICATE PLAIN with an initial response."""
    import base64

    login = server.account()
    c = server.connect()
    ir = base64.b64encode(b"\0" + login.encode() + b"\0" + PASSWORD.encode()).decode()
    c.ok(f"AUTHENTICATE PLAIN {ir}")
    c.ok("SELECT INBOX")


def test_authenticate_plain_continuation_and_cancel(server: Server) -> None:
    """RFC 3501 §6.2.2: AUTHENTICATE PLAIN without IR gets "+ "; "*" cancels with BAD."""
    c = server.connect()
    tag, _ = c.start("AUTHENTICATE PLAIN")
    assert c.read_response().startswith(b"+")
    c.send(b"*\r\n")
    assert c.finish(tag).status == "BAD"
    c.ok("NOOP")


def test_literal_in_select_and_status(server: Server) -> None:
    """RFC 3501 §4.3: any astring may be a literal (mailbox names in SELECT/STATUS/CREATE)."""
    _, c = server.session()
    c.ok("CREATE ", Lit(b"Lit Box"))
    c.ok("SELECT ", Lit(b"Lit Box"))
    c.ok("STATUS ", Lit(b"INBOX"), " (MESSAGES)")


def test_fetch_many_after_append(server: Server) -> None:
    """RFC 3501 §6.4.5: a FETCH of many bodies answers them all (no stall on a big response)."""
    _, c = server.session()
    for i in range(40):
        c.append("INBOX", b"Subject: %d\r\n\r\n" % i + b"z" * 20_000 + b"\r\n")
    c.ok("SELECT INBOX")
    r = c.cmd("FETCH 1:* BODY.PEEK[]", timeout=30)
    assert r.status == "OK" and len(r.lines("FETCH")) == 40


def test_idle_then_commands(server: Server) -> None:
    """RFC 2177 §3: after DONE the session takes commands again; "DONE" in another case also ends IDLE."""
    _, c = server.session()
    c.ok("SELECT INBOX")
    tag = c.idle()
    assert c.done(tag, b"done").status == "OK"
    c.ok("NOOP")


def test_long_line_refused_not_hung(server: Server) -> None:
    """RFC 7162 §4 / RFC 9051 §4: a server may refuse a too-long command line, with BAD or BYE -- it must
    answer, not hang (8 KB is within every server's limit and is accepted)."""
    _, c = server.session()
    c.ok("SELECT INBOX")
    r = c.cmd("SEARCH " + " ".join(["ALL"] * 2000))
    assert r.status == "OK"
