"""Further groups: MIME edge cases, envelope address forms, BINARY APPEND, COMPRESS with IDLE, QRESYNC
during IDLE and MOVE, LIST-EXTENDED forms, non-ASCII names."""

from __future__ import annotations

from tests.conformance.client import Lit, parse
from tests.conformance.conftest import Server
from tests.conformance.test_fetch import fetch, item
from tests.conformance.test_multisession import msg, noop_until


def one(server: Server, data: bytes):  # type: ignore[no-untyped-def]
    _, c = server.session()
    c.append("INBOX", data)
    c.ok("SELECT INBOX")
    return c


def test_envelope_address_forms(server: Server) -> None:
    """RFC 3501 §7.4.2 (addr-adl, quoted display names, encoded words kept as sent) and RFC 5322 §3.4:
    a source route gives the adl; a quoted-pair name is unquoted; a comment-only name is taken."""
    c = one(server, b'From: "Doe, \\"J\\"" <j@example.test>\r\n'
                    b"Sender: <@relay.example,@hop.example:s@example.test>\r\n"
                    b"Reply-To: =?ISO-8859-1?Q?Andr=E9?= <andre@example.test>\r\n"
                    b"To: plain@example.test (Plain Person)\r\nSubject: addr\r\n\r\nx\r\n")
    env = item(fetch(c, "FETCH 1 ENVELOPE"), b"ENVELOPE")
    assert env[2] == [[b'Doe, "J"', b"NIL", b"j", b"example.test"]]  # type: ignore[index]
    assert env[3] == [[b"NIL", b"@relay.example,@hop.example", b"s", b"example.test"]]  # type: ignore[index]
    assert env[4] == [[b"=?ISO-8859-1?Q?Andr=E9?=", b"NIL", b"andre", b"example.test"]]  # type: ignore[index]
    assert env[5][0][2:] == [b"plain", b"example.test"]  # type: ignore[index]


def test_bodystructure_defaults_single_part(server: Server) -> None:
    """RFC 2045 §5.2 / RFC 3501 §7.4.2: no Content-Type is text/plain; charset=us-ascii, 7BIT; BODY[1] of a
    single-part message is its body, BODY[TEXT] too."""
    c = one(server, b"Subject: plain\r\n\r\nline1\r\nline2\r\n")
    bs = item(fetch(c, "FETCH 1 BODYSTRUCTURE"), b"BODYSTRUCTURE")
    assert [x.upper() for x in bs[:2]] == [b"TEXT", b"PLAIN"]  # type: ignore[index,union-attr]
    assert [x.upper() for x in bs[2]] == [b"CHARSET", b"US-ASCII"]  # type: ignore[index,union-attr]
    assert bs[5].upper() == b"7BIT" and bs[6] == b"14" and bs[7] == b"2"  # type: ignore[index,union-attr]
    assert fetch(c, "FETCH 1 BODY.PEEK[1]")[1] == b"line1\r\nline2\r\n"
    assert fetch(c, "FETCH 1 BODY.PEEK[TEXT]")[1] == b"line1\r\nline2\r\n"


def test_toplevel_message_rfc822(server: Server) -> None:
    """RFC 3501 §6.4.5: for a message whose body is message/rfc822, BODY[1] is the encapsulated message and
    BODY[1.HEADER] its header; BODYSTRUCTURE has the envelope of the inner message."""
    inner = b"From: in@example.test\r\nSubject: inner top\r\n\r\ninner body\r\n"
    c = one(server, b"Subject: outer\r\nMIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n" + inner)
    assert fetch(c, "FETCH 1 BODY.PEEK[1]")[1] == inner
    assert fetch(c, "FETCH 1 BODY.PEEK[1.HEADER]")[1] == b"From: in@example.test\r\nSubject: inner top\r\n\r\n"
    assert fetch(c, "FETCH 1 BODY.PEEK[1.TEXT]")[1] == b"inner body\r\n"
    bs = item(fetch(c, "FETCH 1 BODYSTRUCTURE"), b"BODYSTRUCTURE")
    assert bs[0].upper() == b"MESSAGE" and bs[7][1] == b"inner top"  # type: ignore[index,union-attr]


def test_multipart_nested_part_numbers(server: Server) -> None:
    """RFC 3501 §6.4.5: nested multiparts number their parts 1, 2.1, 2.2; a multipart's MIME header is
    [2.MIME]; the bodystructure nests the same way."""
    data = (b"Subject: nest\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n"
            b"--a\r\nContent-Type: text/plain\r\n\r\nP1\r\n"
            b"--a\r\nContent-Type: multipart/related; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: text/html\r\n\r\nH\r\n--b\r\nContent-Type: image/png\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\niVBORw==\r\n--b--\r\n--a--\r\n")
    c = one(server, data)
    assert fetch(c, "FETCH 1 BODY.PEEK[2.1]")[1] == b"H"
    assert fetch(c, "FETCH 1 BODY.PEEK[2.2]")[1] == b"iVBORw=="
    assert fetch(c, "FETCH 1 BODY.PEEK[2.MIME]")[1] == b"Content-Type: multipart/related; boundary=b\r\n\r\n"
    bs = item(fetch(c, "FETCH 1 BODYSTRUCTURE"), b"BODYSTRUCTURE")
    assert bs[1][2].upper() == b"RELATED" and bs[1][1][0].upper() == b"IMAGE"  # type: ignore[index,union-attr]
    assert fetch(c, "FETCH 1 BINARY.PEEK[2.2]")[1] == b"\x89PNG"


def test_partial_fetch_ranges(server: Server) -> None:
    """RFC 3501 §6.4.5: <origin.octets> partial: the response names the origin; past the end is empty;
    BINARY partial applies to the decoded data (RFC 3516 §4.1)."""
    c = one(server, b"Subject: p\r\n\r\n0123456789\r\n")
    items = fetch(c, "FETCH 1 BODY.PEEK[TEXT]<2.3>")
    assert items[0].upper() == b"BODY[TEXT]<2>" and items[1] == b"234"  # type: ignore[union-attr]
    items = fetch(c, "FETCH 1 BODY.PEEK[TEXT]<10.100>")
    assert items[1] == b"\r\n"
    items = fetch(c, "FETCH 1 BINARY.PEEK[1]<1.2>")
    assert items[0].upper() == b"BINARY[1]<1>" and items[1] == b"12"  # type: ignore[union-attr]


def test_append_literal8_binary(server: Server) -> None:
    """RFC 3516 §4.4: APPEND with a literal8 (~{n}) of binary content: the server stores it unchanged (BINARY
    fetch returns it) or, if it cannot, MUST refuse it with NO [UNKNOWN-CTE] -- never store it altered."""
    _, c = server.session()
    payload = bytes(range(256))
    data = (b"Subject: bin\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: binary\r\n\r\n" + payload)
    r = c.cmd("APPEND INBOX ", Lit(data, eight=True))
    if r.status == "NO" and r.code() == "UNKNOWN-CTE":
        assert c.ok("STATUS INBOX (MESSAGES)").lines("STATUS")[0].endswith(b"(MESSAGES 0)")
        return
    assert r.status == "OK", r
    c.ok("SELECT INBOX")
    items = fetch(c, "FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1])")
    assert item(items, b"BINARY.SIZE[1]") == b"256"
    assert item(items, b"BINARY[1]") == payload


def test_compress_then_idle_push(server: Server) -> None:
    """RFC 4978 §4 (the server flushes its compressor when it would wait for the client) with RFC 2177:
    an EXISTS pushed during IDLE arrives on a compressed connection."""
    login, a = server.session()
    a.compress()
    a.ok("SELECT INBOX")
    tag = a.idle()
    b = server.connect(login)
    b.append("INBOX", msg(1))
    got = a.idle_until(lambda x: x == b"* 1 EXISTS")
    assert b"* 1 EXISTS" in got, got
    assert a.done(tag).status == "OK"


def test_vanished_during_idle(server: Server) -> None:
    """RFC 7162 §3.2.10 with RFC 2177: a QRESYNC session idling gets VANISHED for another session's
    expunge."""
    login, a = server.session()
    a.append("INBOX", msg(1))
    a.append("INBOX", msg(2))
    a.ok("ENABLE QRESYNC")
    a.ok("SELECT INBOX")
    b = server.connect(login)
    b.ok("SELECT INBOX")
    tag = a.idle()
    b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    got = a.idle_until(lambda x: x.startswith(b"* VANISHED"))
    assert any(x.startswith(b"* VANISHED ") and b"EARLIER" not in x for x in got), got
    assert a.done(tag).status == "OK"


def test_move_with_qresync_vanished(server: Server) -> None:
    """RFC 6851 §4.3 / RFC 7162 §3.2.10: with QRESYNC enabled, MOVE reports VANISHED instead of EXPUNGE."""
    _, c = server.session()
    c.ok("CREATE Dest")
    c.append("INBOX", msg(1))
    c.ok("ENABLE QRESYNC")
    c.ok("SELECT INBOX")
    r = c.ok("MOVE 1 Dest")
    assert not r.lines("EXPUNGE") and any(x.startswith(b"* VANISHED ") for x in r.untagged), r.untagged


def test_list_multiple_patterns_and_return_children(server: Server) -> None:
    """RFC 5258 §3 / §4: LIST "" (p1 p2) matches either pattern; RETURN (CHILDREN) adds \\HasChildren /
    \\HasNoChildren."""
    _, c = server.session()
    c.ok("CREATE Lp1")
    c.ok("CREATE Lp2.Sub")
    r = c.ok('LIST "" (Lp1 Lp2) RETURN (CHILDREN)')
    got = {parse(x)[4]: [a.lower() for a in parse(x)[2]] for x in r.lines("LIST")}
    assert set(got) == {b"Lp1", b"Lp2"}
    assert b"\\hasnochildren" in got[b"Lp1"] and b"\\haschildren" in got[b"Lp2"]


def test_non_ascii_names_mutf7(server: Server) -> None:
    """RFC 3501 §5.1.3: names with non-ASCII characters are sent in modified UTF-7; LIST "*" returns the
    same octets; RENAME to another such name works; the names stay distinct."""
    _, c = server.session()
    names = [b"Entw&APw-rfe", b"&ZeVnLIqe-", b"Caf&AOk-.Men&APw-"]
    for n in names:
        c.ok("CREATE " + n.decode())
    r = c.ok('LIST "" *')
    listed = {parse(x)[4] for x in r.lines("LIST")}
    assert set(names) <= listed | {b"Caf&AOk-"}
    c.ok("RENAME &ZeVnLIqe- &U,BTFw-")
    r = c.ok('LIST "" *')
    listed = {parse(x)[4] for x in r.lines("LIST")}
    assert b"&U,BTFw-" in listed and b"&ZeVnLIqe-" not in listed
    # Two adjacent encoded runs are not modified UTF-7 (they must be one run): refused.
    assert c.cmd("CREATE &ZeVnLIqe-&U,BTFw-").status in ("NO", "BAD")


def test_flag_change_seen_by_examine_session(server: Server) -> None:
    """RFC 3501 §7.4.2 / §6.3.2: a read-only (EXAMINE) session is also told about flag changes."""
    login, a = server.session()
    a.append("INBOX", msg(1))
    b = server.connect(login)
    b.ok("EXAMINE INBOX")
    a.ok("SELECT INBOX")
    a.ok("STORE 1 +FLAGS (\\Seen)")
    r = noop_until(b, "FETCH")
    assert b"\\Seen" in r.lines("FETCH")[0]


def test_esearch_uid_count_and_empty(server: Server) -> None:
    """RFC 4731 §3.1: UID SEARCH RETURN (COUNT) in an empty mailbox is ESEARCH ... UID COUNT 0."""
    _, c = server.session()
    c.ok("SELECT INBOX")
    r = c.ok("UID SEARCH RETURN (COUNT) ALL")
    tok = parse(r.lines("ESEARCH")[0])
    assert [x.upper() for x in tok[3:]] == [b"UID", b"COUNT", b"0"]


def test_append_date_space_padded(server: Server) -> None:
    """RFC 3501 §9 date-day-fixed: a space-padded day (" 5-Jan-2021 ...") is accepted in APPEND."""
    _, c = server.session()
    c.ok('APPEND INBOX " 5-Jan-2021 01:02:03 +0000" ', Lit(b"Subject: d\r\n\r\nx\r\n"))
    c.ok("SELECT INBOX")
    d = item(fetch(c, "FETCH 1 INTERNALDATE"), b"INTERNALDATE")
    assert d in (b" 5-Jan-2021 01:02:03 +0000", b"05-Jan-2021 01:02:03 +0000")


def test_nil_as_a_string(server: Server) -> None:
    """RFC 3501 §4.5 / §9: NIL is the null value only where nstring is allowed; a Subject "NIL" is sent as
    the string "NIL" in ENVELOPE, and SEARCH SUBJECT NIL searches for the text NIL (astring)."""
    _, c = server.session()
    c.append("INBOX", b"Subject: NIL\r\nFrom: nil@example.test\r\n\r\nx\r\n")
    c.append("INBOX", b"Subject: other\r\n\r\ny\r\n")
    c.ok("SELECT INBOX")
    r = c.ok("FETCH 1 ENVELOPE")
    line = r.lines("FETCH")[0]
    assert b'"NIL"' in line or b"{3}\r\nNIL" in line, line
    r = c.ok("SEARCH SUBJECT NIL")
    assert r.lines("SEARCH")[0].split()[2:] == [b"1"]
    r = c.ok("SEARCH FROM nil")
    assert r.lines("SEARCH")[0].split()[2:] == [b"1"]
    r = c.ok("FETCH 2 ENVELOPE")
    env = parse(r.lines("FETCH")[0])[3][1]
    assert env[0] == b"NIL" and env[2] == b"NIL" and env[9] == b"NIL"


def test_search_dates_ignore_time_and_zone(server: Server) -> None:
    """RFC 3501 §6.4.4: BEFORE/ON/SINCE compare the date of INTERNALDATE, SENT* the date of the Date: header
    in its own zone ("disregarding time and timezone"): a 23:30 -0500 message is SENTON its own day."""
    _, c = server.session()
    c.append("INBOX", b"Date: Tue, 10 Mar 2020 23:30:00 -0500\r\nSubject: late\r\n\r\nx\r\n",
             date="10-Mar-2020 23:30:00 -0500")
    c.append("INBOX", b"Date: 1 Jan 2001 00:00:00 +1400\r\nSubject: early\r\n\r\ny\r\n",
             date="01-Jan-2001 00:00:00 +1400")
    c.ok("SELECT INBOX")

    def s(key: str) -> list[bytes]:
        return c.ok(f"SEARCH {key}").lines("SEARCH")[0].split()[2:]

    assert s("SENTON 10-Mar-2020") == [b"1"] and s("SENTON 11-Mar-2020") == []
    assert s("SENTON 1-Jan-2001") == [b"2"]
    assert s("SENTBEFORE 1-Jan-2001") == [] and s("SENTSINCE 1-Jan-2001") == [b"1", b"2"]
    assert s("SENTBEFORE 2-Jan-2001") == [b"2"]
