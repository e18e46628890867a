"""FETCH: every item on a message/rfc822-in-multipart message, ENVELOPE groups and NIL, BINARY,
sequence-set edge cases, STORE responses."""

from __future__ import annotations

import datetime
import re

from tests.conformance.client import Conn, Lit, parse
from tests.conformance.conftest import Server

NESTED = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: undisclosed-recipients:;\r\n"
    b"Cc: Team: bob@example.test, \"Carol C\" <carol@example.test>;, dave@example.test\r\n"
    b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= nested\r\n"
    b"Date: Mon, 30 Nov 2026 12:00:00 +0000\r\n"
    b"Message-ID: <outer@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"OUTER\"\r\n"
    b"\r\n"
    b"preamble\r\n"
    b"--OUTER\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Hello =C3=BC there\r\n"
    b"--OUTER\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"Content-Description: forwarded\r\n"
    b"\r\n"
    b"From: Bob <bob@example.test>\r\n"
    b"Subject: inner\r\n"
    b"Date: Sun, 29 Nov 2026 10:00:00 +0100\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/alternative; boundary=\"INNER\"\r\n"
    b"\r\n"
    b"--INNER\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"inner plain\r\n"
    b"--INNER\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<p>inner html</p>\r\n"
    b"--INNER--\r\n"
    b"--OUTER\r\n"
    b"Content-Type: application/octet-stream; name=\"a.bin\"\r\n"
    b"Content-Disposition: attachment; filename=\"a.bin\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAECAwQFBgcICQ==\r\n"
    b"--OUTER--\r\n"
    b"epilogue\r\n"
)


def fetch(c: Conn, cmd: str) -> list[object]:
    r = c.ok(cmd)
    (line,) = [x for x in r.lines("FETCH") if x.startswith(b"* 1 ")] or r.lines("FETCH")[:1]
    tok = parse(line)
    return tok[3]


def item(items: list[object], name: bytes) -> object:
    for i in range(0, len(items), 2):
        if isinstance(items[i], bytes) and items[i].upper() == name.upper():  # type: ignore[union-attr]
            return items[i + 1]
    raise KeyError(name, items)


def nested(server: Server) -> Conn:
    _, c = server.session()
    c.append("INBOX", NESTED, date="30-Nov-2026 12:00:00 +0000")
    c.ok("SELECT INBOX")
    return c


def test_envelope_groups_and_nil(server: Server) -> None:
    """RFC 3501 §7.4.2 ENVELOPE / RFC 9051 §7.5.2: a group is (NIL NIL "name" NIL) ... (NIL NIL NIL NIL);
    an absent field is NIL; in-reply-to NIL; the encoded subject as sent."""
    c = nested(server)
    env = item(fetch(c, "FETCH 1 ENVELOPE"), b"ENVELOPE")
    assert isinstance(env, list) and len(env) == 10
    assert env[0] == b"Mon, 30 Nov 2026 12:00:00 +0000"
    assert env[1] == b"=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= nested"
    assert env[2] == [[b"Alice", b"NIL", b"alice", b"example.test"]]
    assert env[3] == env[2] and env[4] == env[2]  # sender, reply-to default to from
    assert env[5] == [[b"NIL", b"NIL", b"undisclosed-recipients", b"NIL"], [b"NIL", b"NIL", b"NIL", b"NIL"]]
    assert env[6] == [[b"NIL", b"NIL", b"Team", b"NIL"], [b"NIL", b"NIL", b"bob", b"example.test"],
                      [b"Carol C", b"NIL", b"carol", b"example.test"], [b"NIL", b"NIL", b"NIL", b"NIL"],
                      [b"NIL", b"NIL", b"dave", b"example.test"]]
    assert env[7] == b"NIL" and env[8] == b"NIL" and env[9] == b"<outer@example.test>"


def test_envelope_all_nil(server: Server) -> None:
    """RFC 3501 §7.4.2: a message with no headers has an ENVELOPE of NILs (from/sender/reply-to NIL)."""
    _, c = server.session()
    c.append("INBOX", b"\r\nonly a body\r\n")
    c.ok("SELECT INBOX")
    env = item(fetch(c, "FETCH 1 ENVELOPE"), b"ENVELOPE")
    assert env == [b"NIL"] * 10, env


def test_bodystructure_message_rfc822(server: Server) -> None:
    """RFC 3501 §7.4.2 BODYSTRUCTURE: a message/rfc822 part carries the inner ENVELOPE, BODYSTRUCTURE and
    line count; multipart has subtype and (boundary) params; base64 part its encoding and size."""
    c = nested(server)
    bs = item(fetch(c, "FETCH 1 BODYSTRUCTURE"), b"BODYSTRUCTURE")
    assert isinstance(bs, list)
    text, msg, att = bs[0], bs[1], bs[2]
    assert bs[3].upper() == b"MIXED" and [x.upper() for x in bs[4]] == [b"BOUNDARY", b"OUTER"]
    assert text[0].upper() == b"TEXT" and text[1].upper() == b"PLAIN"
    assert [x.upper() for x in text[2]] == [b"CHARSET", b"UTF-8"] and text[5].upper() == b"QUOTED-PRINTABLE"
    # RFC 2046 §5.1.1: the CRLF before a boundary belongs to the boundary, not to the part.
    assert text[6] == str(len(b"Hello =C3=BC there")).encode() and text[7] in (b"0", b"1")
    assert msg[0].upper() == b"MESSAGE" and msg[1].upper() == b"RFC822"
    assert msg[4] == b"forwarded"
    inner_env, inner_body = msg[7], msg[8]
    assert inner_env[1] == b"inner" and inner_env[2] == [[b"Bob", b"NIL", b"bob", b"example.test"]]
    assert isinstance(inner_body[0], list) and inner_body[2].upper() == b"ALTERNATIVE"
    assert inner_body[0][1].upper() == b"PLAIN" and inner_body[1][1].upper() == b"HTML"
    assert int(msg[9]) > 5  # body lines of the encapsulated message
    assert att[0].upper() == b"APPLICATION" and att[5].upper() == b"BASE64"
    assert att[8][0].upper() == b"ATTACHMENT"
    body = item(fetch(c, "FETCH 1 BODY"), b"BODY")
    assert isinstance(body, list) and body[3].upper() == b"MIXED" and len(body) == 4  # no extension data


def test_body_sections_nested(server: Server) -> None:
    """RFC 3501 §6.4.5 section-spec: 1, 2.HEADER, 2.TEXT, 2.1, 2.2, 2.MIME, 1.MIME, 3, HEADER.FIELDS,
    HEADER.FIELDS.NOT, partial <o.n>, and a missing part is an empty string."""
    c = nested(server)
    cases = {
        "BODY.PEEK[1]": b"Hello =C3=BC there",  # RFC 2046 §5.1.1: the CRLF before "--" is the boundary's
        "BODY.PEEK[2.1]": b"inner plain",
        "BODY.PEEK[2.2]": b"<p>inner html</p>",
        "BODY.PEEK[1.MIME]": b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: "
                             b"quoted-printable\r\n\r\n",
        "BODY.PEEK[2.MIME]": b"Content-Type: message/rfc822\r\nContent-Description: forwarded\r\n\r\n",
        "BODY.PEEK[3]": b"AAECAwQFBgcICQ==",
        "BODY.PEEK[HEADER.FIELDS (Subject)]": b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= nested\r\n\r\n",
        "BODY.PEEK[2.HEADER.FIELDS (SUBJECT)]": b"Subject: inner\r\n\r\n",
        "BODY.PEEK[9]": b"",
        "BODY.PEEK[]<0.4>": b"From",
    }
    for spec, want in cases.items():
        items = fetch(c, f"FETCH 1 {spec}")
        assert items[1] == want or (want == b"" and items[1] in (b"", b"NIL")), (spec, items)
    items = fetch(c, "FETCH 1 BODY.PEEK[2.HEADER]")
    assert items[1].startswith(b"From: Bob") and items[1].endswith(b"\r\n\r\n")  # type: ignore[union-attr]
    items = fetch(c, "FETCH 1 BODY.PEEK[2.TEXT]")
    assert items[1].startswith(b"--INNER\r\n")  # type: ignore[union-attr]
    items = fetch(c, "FETCH 1 BODY.PEEK[HEADER.FIELDS.NOT (From To Cc Subject Date Message-ID MIME-Version)]")
    assert items[1] == b"Content-Type: multipart/mixed; boundary=\"OUTER\"\r\n\r\n"
    items = fetch(c, "FETCH 1 BODY.PEEK[]<10000.5>")
    assert items[0].upper() == b"BODY[]<10000>" and items[1] == b""  # type: ignore[union-attr]


def test_fetch_all_items(server: Server) -> None:
    """RFC 3501 §6.4.5: ALL/FAST/FULL macros, RFC822.SIZE equals the octets, INTERNALDATE as appended,
    RFC822.HEADER/RFC822.TEXT, UID; BODY[] without PEEK sets \\Seen (and FLAGS comes back)."""
    c = nested(server)
    items = fetch(c, "FETCH 1 FULL")
    names = {items[i].upper() for i in range(0, len(items), 2)}  # type: ignore[union-attr]
    assert names == {b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY"}
    assert item(items, b"RFC822.SIZE") == str(len(NESTED)).encode()
    assert item(items, b"INTERNALDATE") == b"30-Nov-2026 12:00:00 +0000"
    items = fetch(c, "FETCH 1 (RFC822.HEADER UID)")
    assert item(items, b"RFC822.HEADER") == NESTED.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert b"\\Seen" not in item(fetch(c, "FETCH 1 FLAGS"), b"FLAGS")  # type: ignore[operator]
    items = fetch(c, "FETCH 1 RFC822.TEXT")  # = BODY[TEXT], not PEEK
    assert item(items, b"RFC822.TEXT") == NESTED.split(b"\r\n\r\n", 1)[1]
    c.ok("FETCH 1 BODY[1]")  # sets \Seen (the FETCH FLAGS may come now or at the next command)
    r = c.ok("FETCH 1 FLAGS")
    assert b"\\Seen" in r.lines("FETCH")[0]


def test_binary(server: Server) -> None:
    """RFC 3516 §4.2/§4.3: BINARY[3] is the decoded octets (literal8 when they hold NUL), BINARY.SIZE[3]
    their length, BINARY[1] decodes quoted-printable."""
    c = nested(server)
    r = c.ok("FETCH 1 BINARY.PEEK[3]")
    assert bytes(range(10)) in r.lines("FETCH")[0] and b"~{10}" in r.lines("FETCH")[0]
    items = fetch(c, "FETCH 1 BINARY.SIZE[3]")
    assert item(items, b"BINARY.SIZE[3]") == b"10"
    items = fetch(c, "FETCH 1 BINARY.PEEK[1]")
    assert items[1] == "Hello ü there".encode()
    r = c.cmd("FETCH 1 BINARY.PEEK[2]")  # message/rfc822 is not a leaf that can be decoded
    assert r.status in ("OK", "NO", "BAD")
    c.ok("NOOP")


def test_sequence_set_edges(server: Server) -> None:
    """RFC 3501 §9 seq-number/sequence-set: "*" is the last message, "3:1" equals "1:3", "*:1" all;
    in an empty mailbox FETCH 1:* is BAD/NO while UID FETCH 1:* is OK with nothing (§6.4.8)."""
    _, c = server.session()
    c.ok("SELECT INBOX")
    assert c.cmd("FETCH 1:* FLAGS").status in ("BAD", "NO")
    r = c.ok("UID FETCH 1:* FLAGS")
    assert r.lines("FETCH") == []
    r = c.ok("SEARCH ALL")
    assert r.lines("SEARCH") == [b"* SEARCH"]
    for i in range(3):
        c.append("INBOX", b"Subject: %d\r\n\r\n%d\r\n" % (i, i))
    c.ok("NOOP")
    assert c.ok("FETCH * UID").lines("FETCH")[0].startswith(b"* 3 FETCH")
    assert len(c.ok("FETCH 3:1 UID").lines("FETCH")) == 3
    assert len(c.ok("FETCH *:1 UID").lines("FETCH")) == 3
    assert len(c.ok("FETCH 2,1,2 UID").lines("FETCH")) == 2
    r = c.ok("UID FETCH * UID")
    assert len(r.lines("FETCH")) == 1 and r.lines("FETCH")[0].startswith(b"* 3 ")
    last = int(re.search(rb"UID (\d+)", r.lines("FETCH")[0]).group(1))  # type: ignore[union-attr]
    r = c.ok(f"UID FETCH {last + 5}:* UID")  # §6.4.8: n:* always includes the last message
    assert len(r.lines("FETCH")) == 1
    assert c.cmd("FETCH 4 UID").status in ("BAD", "NO")
    assert c.cmd("FETCH 0 UID").status == "BAD"


def test_store_responses(server: Server) -> None:
    """RFC 3501 §6.4.6: STORE answers an untagged FETCH with the new FLAGS; .SILENT suppresses it;
    -FLAGS and FLAGS replace; keywords are atoms; \\Recent cannot be stored."""
    _, c = server.session()
    c.append("INBOX", b"Subject: s\r\n\r\nx\r\n")
    c.ok("SELECT INBOX")
    r = c.ok("STORE 1 +FLAGS (\\Flagged $Label1)")
    (line,) = r.lines("FETCH")
    assert b"\\Flagged" in line and b"$Label1" in line
    r = c.ok("STORE 1 -FLAGS.SILENT (\\Flagged)")
    assert r.lines("FETCH") == []
    r = c.ok("STORE 1 FLAGS (\\Answered)")
    flags = parse(r.lines("FETCH")[0])[3][1]
    assert [f for f in flags if f.lower() != b"\\recent"] == [b"\\Answered"]
    r = c.ok("UID STORE 1:* +FLAGS (\\Seen)")
    assert b"UID " in r.lines("FETCH")[0]  # §6.4.8: UID STORE's FETCH includes UID
    r = c.ok("SELECT INBOX")
    flags_line = r.lines("FLAGS")[0]
    assert b"$Label1" in flags_line  # keywords defined stay in FLAGS
    assert c.cmd("STORE 1 +FLAGS (\\Bogus)").status in ("BAD", "NO")


def test_append_responses(server: Server) -> None:
    """RFC 3501 §6.3.11 / RFC 4315 §3: APPEND keeps flags and INTERNALDATE, answers [APPENDUID v uid];
    the selected session sees EXISTS."""
    _, c = server.session()
    c.ok("SELECT INBOX")
    r = c.ok("APPEND INBOX (\\Seen \\Draft) \"01-Feb-2020 10:11:12 +0100\" ", Lit(b"Subject: a\r\n\r\nbody\r\n"))
    code = r.code() or ""
    assert code.startswith("APPENDUID "), r
    r2 = c.ok("NOOP")
    assert r.numbers("EXISTS") == [1] or r2.numbers("EXISTS") == [1]
    items = fetch(c, "FETCH 1 (FLAGS INTERNALDATE UID)")
    assert set(item(items, b"FLAGS")) >= {b"\\Seen", b"\\Draft"}  # type: ignore[arg-type]
    # The same instant; the zone shown is the server's choice (Dovecot shows +0000).
    got = datetime.datetime.strptime(item(items, b"INTERNALDATE").decode(), "%d-%b-%Y %H:%M:%S %z")  # type: ignore[union-attr]
    assert got.timestamp() == datetime.datetime(2020, 2, 1, 9, 11, 12, tzinfo=datetime.UTC).timestamp()
    assert item(items, b"UID") == code.split()[2].encode()


def test_append_with_nul(server: Server) -> None:
    """RFC 3501 §9 says a literal is CHAR8 (no NUL), but servers take old mail with NUL bytes (Dovecot does;
    mbsync migrations need it): APPEND stores it."""
    _, c = server.session()
    data = b"Subject: nul\r\n\r\nbad\x00byte\r\n"
    r = c.cmd("APPEND INBOX ", Lit(data))
    assert r.status == "OK", r
    c.ok("SELECT INBOX")
    assert c.ok("FETCH 1 RFC822.SIZE").lines("FETCH")


SINGLE = (b"From: x@example.test\r\nSubject: ext\r\nMIME-Version: 1.0\r\n"
          b"Content-Type: TEXT/html; charset=\"us-ascii\"; format=flowed\r\n"
          b"Content-ID: <cid1@example.test>\r\nContent-Description: desc\r\n"
          b"Content-Transfer-Encoding: 7bit\r\nContent-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n"
          b"Content-Disposition: inline; filename=\"page.html\"\r\nContent-Language: en, de\r\n"
          b"Content-Location: http://example.test/page.html\r\n\r\n<p>one</p>\r\n<p>two</p>\r\n")


def test_bodystructure_extension_fields(server: Server) -> None:
    """RFC 3501 §7.4.2 / RFC 9051 §7.5.2 body-type-text and body-ext-1part: type/subtype, params, id,
    description, encoding, octets, lines, then md5, disposition (with params), language list, location."""
    _, c = server.session()
    c.append("INBOX", SINGLE)
    c.ok("SELECT INBOX")
    bs = item(fetch(c, "FETCH 1 BODYSTRUCTURE"), b"BODYSTRUCTURE")
    assert [x.upper() if isinstance(x, bytes) else x for x in bs[:2]] == [b"TEXT", b"HTML"]  # type: ignore[index]
    params = [x.lower() for x in bs[2]]  # type: ignore[index]
    assert params == [b"charset", b"us-ascii", b"format", b"flowed"]
    assert bs[3] == b"<cid1@example.test>" and bs[4] == b"desc" and bs[5].upper() == b"7BIT"  # type: ignore[index]
    assert bs[6] == b"24" and bs[7] == b"2"  # type: ignore[index]
    assert bs[8] == b"Q2hlY2sgSW50ZWdyaXR5IQ=="  # type: ignore[index]
    assert bs[9][0].lower() == b"inline" and [x.lower() for x in bs[9][1]] == [b"filename", b"page.html"]  # type: ignore[index]
    lang = bs[10]  # type: ignore[index]
    assert [x.lower() for x in lang] == [b"en", b"de"]  # type: ignore[union-attr]
    assert bs[11] == b"http://example.test/page.html"  # type: ignore[index]
    body = item(fetch(c, "FETCH 1 BODY"), b"BODY")
    assert len(body) == 8  # type: ignore[arg-type]  # BODY: no extension data


def test_header_fields_case_and_missing(server: Server) -> None:
    """RFC 3501 §6.4.5: HEADER.FIELDS matches names case-insensitively, keeps the message's own spelling,
    and with no matching field returns just the blank line (CRLF)."""
    _, c = server.session()
    c.append("INBOX", b"SUBJECT: Upper\r\nfrom: a@example.test\r\n\r\nbody\r\n")
    c.ok("SELECT INBOX")
    items = fetch(c, "FETCH 1 BODY.PEEK[HEADER.FIELDS (subject FROM)]")
    assert items[1] == b"SUBJECT: Upper\r\nfrom: a@example.test\r\n\r\n"
    items = fetch(c, "FETCH 1 BODY.PEEK[HEADER.FIELDS (X-None)]")
    assert items[1] == b"\r\n"
