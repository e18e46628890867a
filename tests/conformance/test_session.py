"""Session-level conformance: capabilities, ENABLE, ID, LITERAL+, COMPRESS, NAMESPACE, IMAP4rev2."""

from __future__ import annotations

import pytest

from tests.conformance.client import Lit, parse
from tests.conformance.conftest import PASSWORD, Server, dovecot_deviates

REQUIRED = ["IMAP4REV1", "CONDSTORE", "QRESYNC", "ESEARCH", "SEARCHRES", "SORT", "LIST-EXTENDED",
            "LIST-STATUS", "STATUS=SIZE", "BINARY", "MULTIAPPEND", "CATENATE", "COMPRESS=DEFLATE", "QUOTA",
            "LITERAL+", "ENABLE", "ID", "IDLE", "MOVE", "UIDPLUS", "NAMESPACE", "UNSELECT", "SPECIAL-USE",
            "CHILDREN"]


def caps(server: Server, c) -> set[str]:  # type: ignore[no-untyped-def]
    r = c.ok("CAPABILITY")
    (line,) = r.lines("CAPABILITY")
    return {w.decode().upper() for w in line.split()[2:]}


def test_capabilities_after_login(server: Server) -> None:
    """RFC 3501 §6.1.1 / RFC 9051 §6.1.1: CAPABILITY lists IMAP4rev1 and the extensions (each RFC's §)."""
    _, c = server.session()
    got = caps(server, c)
    missing = [x for x in REQUIRED if x not in got]
    assert not missing, f"{server.name} lacks {missing}"
    assert any(x.startswith("THREAD=") for x in got)


def test_starttls_advertised_before_tls(server: Server) -> None:
    """RFC 3501 §6.2.1 / RFC 9051 §6.2.1: before TLS, CAPABILITY lists STARTTLS and IMAP4rev1."""
    import socket

    s = socket.create_connection((server.host, server.port), timeout=10)
    try:
        s.recv(4096)
        s.sendall(b"a CAPABILITY\r\n")
        data = b""
        while b"a OK" not in data:
            chunk = s.recv(4096)
            assert chunk
            data += chunk
        # LOGINDISABLED itself is a SHOULD that Dovecot waives for loopback clients: not asserted.
        assert b"STARTTLS" in data.upper() and b"IMAP4REV1" in data.upper()
    finally:
        s.close()


def test_noop_and_unknown_command(server: Server) -> None:
    """RFC 3501 §6.1.2 NOOP always succeeds; §7.1.3 an unknown command is BAD, and the session goes on."""
    _, c = server.session()
    c.ok("NOOP")
    assert c.cmd("FROBNICATE").status == "BAD"
    assert c.cmd("SELECT").status == "BAD"  # missing argument
    c.ok("NOOP")


def test_logout_sends_bye(server: Server) -> None:
    """RFC 3501 §6.1.3: LOGOUT gets an untagged BYE before the tagged OK."""
    _, c = server.session()
    r = c.ok("LOGOUT")
    assert r.lines("BYE")


def test_logout_closes_the_connection(server: Server) -> None:
    """RFC 9051 §6.1.3: after the tagged OK of LOGOUT "the server MUST ... close the connection".

    Clients wait for the close (mbsync hung at the end of every sync when the box kept
    the TLS connection open with an output producer registered).
    """
    _, c = server.session()
    c.ok("LOGOUT")
    c.sock.settimeout(10)
    try:
        rest = c.sock.recv(65536)
    except TimeoutError:
        raise AssertionError("the connection was still open 10 s after LOGOUT's OK") from None
    except (ConnectionError, OSError):  # a TLS close_notify or a reset both mean "closed"
        rest = b""
    assert rest == b"", rest


def test_enable_condstore_answers_enabled(server: Server) -> None:
    """RFC 5161 §3.1: ENABLE answers ``* ENABLED`` with the extensions it enabled; unknown ones are ignored."""
    _, c = server.session()
    r = c.ok("ENABLE CONDSTORE X-NO-SUCH-THING")
    (line,) = r.lines("ENABLED")
    words = [w.upper() for w in line.split()[2:]]
    assert words == [b"CONDSTORE"]


def test_enable_before_login_is_refused(server: Server) -> None:
    """RFC 5161 §3.1: ENABLE is valid only in the authenticated state: before login nothing is enabled
    (a BAD/NO, or Dovecot's OK "ignored" with an empty ENABLED)."""
    c = server.connect()
    r = c.cmd("ENABLE CONDSTORE")
    assert r.status in ("BAD", "NO") or all(b"CONDSTORE" not in x.upper() for x in r.lines("ENABLED"))


def test_enable_imap4rev2(server: Server, request: pytest.FixtureRequest) -> None:
    """RFC 9051 §6.3.1 / §2.1: a server advertising IMAP4rev2 with IMAP4rev1 enables it with ENABLE; after
    it, SEARCH answers ESEARCH (§7.3.4) and FETCH never shows \\Recent."""
    dovecot_deviates(request, server, "2.3 has no IMAP4rev2")
    login, c = server.session()
    assert "IMAP4REV2" in caps(server, c)
    r = c.ok("ENABLE IMAP4rev2")
    assert b"IMAP4REV2" in r.lines("ENABLED")[0].upper()
    c.append("INBOX", b"Subject: x\r\n\r\nbody\r\n")
    c.ok("SELECT INBOX")
    r = c.ok("SEARCH ALL")
    assert r.lines("ESEARCH") and not r.lines("SEARCH")
    r = c.ok("FETCH 1 FLAGS")
    assert b"\\Recent" not in b"".join(r.untagged)


def test_id(server: Server) -> None:
    """RFC 2971 §3.1: ID answers one untagged ID with NIL or a list of string pairs, before and after login."""
    c = server.connect()
    r = c.ok('ID ("name" "conformance" "version" "1")')
    (line,) = r.lines("ID")
    tok = parse(line)
    assert tok[1].upper() == b"ID"
    assert tok[2] == b"NIL" or (isinstance(tok[2], list) and len(tok[2]) % 2 == 0)
    c.ok("ID NIL")


def test_literal_plus(server: Server) -> None:
    """RFC 7888 §3: a non-synchronizing literal {n+} is sent without waiting for a continuation."""
    login, c = server.session()
    c.send(b"p1 LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(login), login.encode(), len(PASSWORD),
                                                     PASSWORD.encode()))
    r = c.finish("p1")
    assert r.status in ("BAD", "NO")  # already logged in: refused, but the literals were consumed
    msg = b"Subject: plus\r\n\r\nnon-sync\r\n"
    r = c.ok("APPEND INBOX ", Lit(msg, plus=True))
    r = c.ok("SELECT INBOX")
    assert r.numbers("EXISTS") == [1]
    r = c.ok("FETCH 1 BODY.PEEK[]")
    assert msg in r.lines("FETCH")[0]


def test_compress_deflate(server: Server) -> None:
    """RFC 4978 §3: after COMPRESS DEFLATE's OK both directions are raw deflate; a second COMPRESS is NO
    [COMPRESSIONACTIVE]; CAPABILITY no longer lists COMPRESS=DEFLATE (§3)."""
    _, c = server.session()
    c.compress()
    big = b"Subject: zipped\r\n\r\n" + b"line of text that compresses well\r\n" * 200
    c.append("INBOX", big)
    c.ok("SELECT INBOX")
    r = c.ok("FETCH 1 BODY.PEEK[]")
    assert big in r.lines("FETCH")[0]
    r = c.cmd("COMPRESS DEFLATE")
    assert r.status in ("NO", "BAD")
    assert r.code() == "COMPRESSIONACTIVE" or r.status == "BAD"
    c.ok("NOOP")


def test_namespace(server: Server) -> None:
    """RFC 2342 §5: NAMESPACE answers three lists (personal, other, shared), each NIL or ((prefix delim)...)."""
    _, c = server.session()
    r = c.ok("NAMESPACE")
    (line,) = r.lines("NAMESPACE")
    tok = parse(line)
    assert len(tok) == 5
    personal = tok[2]
    assert isinstance(personal, list) and personal[0][0] == b"" and len(personal[0][1]) == 1


def test_idle_done(server: Server) -> None:
    """RFC 2177 §3: IDLE gets a continuation; DONE ends it with the tagged OK."""
    _, c = server.session()
    c.ok("SELECT INBOX")
    tag = c.idle()
    assert c.done(tag).status == "OK"


def test_unselect_no_expunge(server: Server) -> None:
    """RFC 3691 §2: UNSELECT leaves the selected state without expunging \\Deleted messages."""
    _, c = server.session()
    c.append("INBOX", b"Subject: a\r\n\r\nx\r\n", flags="\\Deleted")
    c.ok("SELECT INBOX")
    c.ok("UNSELECT")
    assert c.cmd("FETCH 1 FLAGS").status == "BAD"  # no longer selected
    r = c.ok("SELECT INBOX")
    assert r.numbers("EXISTS") == [1]
    c.ok("CLOSE")  # CLOSE does expunge (RFC 3501 §6.4.2), silently
    r = c.ok("SELECT INBOX")
    assert r.numbers("EXISTS") == [0]
