"""SEARCH with every key (RFC 3501 §6.4.4 / RFC 9051 §6.4.4), ESEARCH (RFC 4731), SEARCHRES (RFC 5182),
SORT and THREAD (RFC 5256)."""

from __future__ import annotations

import pytest

from tests.conformance.client import Conn, Lit, parse
from tests.conformance.conftest import Server

M1 = (b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nCc: carol@example.test\r\n"
      b"Subject: apples\r\nDate: Mon, 02 Mar 2020 10:00:00 +0000\r\nMessage-ID: <m1@x>\r\n"
      b"X-Empty:\r\n\r\nthe first body mentions kiwi\r\n")
M2 = (b"From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nBcc: dave@example.test\r\n"
      b"Subject: Re: apples\r\nDate: Tue, 10 Mar 2020 23:30:00 -0500\r\nMessage-ID: <m2@x>\r\n"
      b"In-Reply-To: <m1@x>\r\nReferences: <m1@x>\r\nContent-Type: text/plain; charset=utf-8\r\n"
      b"Content-Transfer-Encoding: 8bit\r\n\r\n" + "Grüße aus Köln\r\n".encode() + b"x" * 2000 + b"\r\n")
M3 = (b"From: carol@example.test\r\nTo: alice@example.test\r\nSubject: bananas\r\n"
      b"Date: Sun, 15 Mar 2020 08:00:00 +0100\r\nMessage-ID: <m3@x>\r\n\r\nno fruit words\r\n")


def setup(server: Server) -> Conn:
    _, c = server.session()
    c.append("INBOX", M1, flags="\\Seen \\Answered", date="02-Mar-2020 10:00:00 +0000")
    c.append("INBOX", M2, flags="\\Flagged $Work", date="11-Mar-2020 05:00:00 +0000")
    c.append("INBOX", M3, flags="\\Deleted \\Draft", date="15-Mar-2020 07:00:00 +0000")
    c.ok("SELECT INBOX")
    return c


def hits(c: Conn, *parts: str | Lit) -> list[int]:
    r = c.ok(*parts)
    (line,) = r.lines("SEARCH")
    return [int(x) for x in line.split()[2:]]


KEYS = {
    "ALL": [1, 2, 3], "ANSWERED": [1], "UNANSWERED": [2, 3], "DELETED": [3], "UNDELETED": [1, 2],
    "DRAFT": [3], "UNDRAFT": [1, 2], "FLAGGED": [2], "UNFLAGGED": [1, 3], "SEEN": [1], "UNSEEN": [2, 3],
    "KEYWORD $Work": [2], "UNKEYWORD $Work": [1, 3], "NEW": [2, 3], "OLD": [], "RECENT": [1, 2, 3],
    "FROM alice": [1], "FROM \"example.test\"": [1, 2, 3], "TO alice": [2, 3], "CC carol": [1], "BCC dave": [2],
    "SUBJECT apples": [1, 2], "SUBJECT \"RE: APP\"": [2], "BODY kiwi": [1], "TEXT kiwi": [1],
    "TEXT Subject": [1, 2, 3], "BODY \"Grüße\"": [2], "HEADER Message-ID m2": [2], "HEADER X-Empty \"\"": [1],
    "HEADER In-Reply-To \"\"": [2], "HEADER X-Nowhere \"\"": [],
    "LARGER 1000": [2], "SMALLER 1000": [1, 3],
    "BEFORE 11-Mar-2020": [1], "ON 11-Mar-2020": [2], "SINCE 11-Mar-2020": [2, 3],
    "SENTBEFORE 10-Mar-2020": [1], "SENTON 10-Mar-2020": [2], "SENTSINCE 10-Mar-2020": [2, 3],
    "SENTON 15-Mar-2020": [3], "SENTSINCE 16-Mar-2020": [],
    "NOT SEEN": [2, 3], "OR SEEN FLAGGED": [1, 2], "OR OR SEEN FLAGGED DRAFT": [1, 2, 3],
    "(SEEN ANSWERED)": [1], "SEEN UNSEEN": [], "1:2 UNSEEN": [2], "2:*": [2, 3], "*": [3], "*:2": [2, 3],
    "NOT (OR 1 3)": [2], "UNDELETED NOT FROM bob": [1],
}


@pytest.mark.parametrize("key", list(KEYS))
def test_search_key(server: Server, key: str) -> None:
    """RFC 3501 §6.4.4 / RFC 9051 §6.4.4 search keys: flags, addresses, substring (case-insensitive),
    HEADER with "" matching the presence of a field (also an empty one), sizes, INTERNALDATE
    (BEFORE/ON/SINCE, date only, server zone) and Date: header (SENT*, the sender's zone), sets, OR/NOT."""
    c = setup(server)
    charset = "CHARSET UTF-8 " if any(ord(ch) > 127 for ch in key) else ""
    assert hits(c, f"SEARCH {charset}{key}") == KEYS[key], key


def test_uid_search_and_uid_key(server: Server) -> None:
    """RFC 3501 §6.4.8: UID SEARCH answers UIDs; the UID key takes a UID set."""
    c = setup(server)
    uids = hits(c, "UID SEARCH ALL")
    assert len(uids) == 3 and uids == sorted(uids)
    assert hits(c, f"SEARCH UID {uids[1]}") == [2]
    assert hits(c, f"UID SEARCH UID {uids[2]}:*") == [uids[2]]


def test_search_charset_literal(server: Server) -> None:
    """RFC 3501 §6.4.4: CHARSET UTF-8 with the search string as a literal; an unknown charset is NO
    [BADCHARSET]."""
    c = setup(server)
    assert hits(c, "SEARCH CHARSET UTF-8 TEXT ", Lit("Köln".encode())) == [2]
    r = c.cmd("SEARCH CHARSET X-UNKNOWN TEXT foo")
    assert r.status == "NO" and (r.code() or "").startswith("BADCHARSET")


def test_search_bad_syntax(server: Server) -> None:
    """RFC 3501 §6.4.4: an invalid key or date is BAD; the session goes on."""
    c = setup(server)
    assert c.cmd("SEARCH FROBNICATE").status == "BAD"
    assert c.cmd("SEARCH SINCE 31-Foo-2020").status == "BAD"
    assert c.cmd("SEARCH (SEEN").status == "BAD"
    c.ok("NOOP")


def test_esearch_return(server: Server) -> None:
    """RFC 4731 §3.1/§3.2: RETURN (MIN MAX COUNT ALL) answers one ESEARCH (TAG "t") with the asked items;
    ALL as a sequence set; no match gives no MIN/MAX/ALL but COUNT 0; UID adds the UID atom."""
    c = setup(server)
    r = c.ok("SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN")
    (line,) = r.lines("ESEARCH")
    tok = parse(line)
    assert tok[2][0].upper() == b"TAG"
    vals = {tok[i].upper(): tok[i + 1] for i in range(3, len(tok), 2)}
    assert vals == {b"MIN": b"2", b"MAX": b"3", b"COUNT": b"2", b"ALL": b"2:3"}
    r = c.ok("SEARCH RETURN (MIN COUNT) KEYWORD $Nothing")
    tok = parse(r.lines("ESEARCH")[0])
    assert tok[3:] == [b"COUNT", b"0"]
    r = c.ok("UID SEARCH RETURN () ALL")
    tok = parse(r.lines("ESEARCH")[0])
    assert tok[3].upper() == b"UID" and tok[4].upper() == b"ALL"


def test_searchres_dollar(server: Server) -> None:
    """RFC 5182 §2.1/§2.2: SEARCH RETURN (SAVE) saves the result silently; "$" then names it in FETCH,
    STORE, SEARCH and COPY; a new SAVE replaces it; before any SAVE "$" is empty."""
    c = setup(server)
    r = c.ok("SEARCH RETURN (SAVE) FLAGGED")
    assert not r.lines("ESEARCH") and not r.lines("SEARCH")
    r = c.ok("FETCH $ (UID)")
    assert [x.split()[1] for x in r.lines("FETCH")] == [b"2"]
    assert hits(c, "SEARCH $ SEEN") == []
    assert hits(c, "SEARCH OR $ 1") == [1, 2]
    c.ok("CREATE Saved")
    c.ok("COPY $ Saved")
    c.ok("SEARCH RETURN (SAVE MIN) UNSEEN")
    r = c.ok("UID FETCH $ FLAGS")
    assert len(r.lines("FETCH")) == 1 and r.lines("FETCH")[0].startswith(b"* 2 ")


def test_searchres_empty_before_save(server: Server) -> None:
    """RFC 5182 §2.1: a "$" used before any SAVE is the empty set (FETCH $ returns nothing, OK)."""
    _, c = server.session()
    c.append("INBOX", M1)
    c.ok("SELECT INBOX")
    r = c.ok("FETCH $ FLAGS")
    assert r.lines("FETCH") == []


def test_sort(server: Server) -> None:
    """RFC 5256 §3: SORT (criteria) charset keys; SUBJECT sorts by base subject (Re: removed), REVERSE,
    DATE by the Date: header (UTC), FROM by the first mailbox; UID SORT answers UIDs."""
    c = setup(server)

    def sort(cmd: str) -> list[int]:
        r = c.ok(cmd)
        (line,) = r.lines("SORT")
        return [int(x) for x in line.split()[2:]]

    assert sort("SORT (DATE) UTF-8 ALL") == [1, 2, 3]
    assert sort("SORT (REVERSE DATE) UTF-8 ALL") == [3, 2, 1]
    assert sort("SORT (SUBJECT DATE) UTF-8 ALL") == [1, 2, 3]
    assert sort("SORT (REVERSE SUBJECT) UTF-8 ALL") == [3, 1, 2]
    assert sort("SORT (FROM) UTF-8 ALL") == [1, 2, 3]
    assert sort("SORT (SIZE) UTF-8 ALL") == [3, 1, 2]
    assert sort("SORT (ARRIVAL) UTF-8 UNSEEN") == [2, 3]
    assert sort("SORT (TO CC) US-ASCII ALL") in ([2, 3, 1], [3, 2, 1])
    assert c.cmd("SORT (BOGUS) UTF-8 ALL").status == "BAD"
    assert c.cmd("SORT DATE UTF-8 ALL").status == "BAD"
    uids = hits(c, "UID SEARCH ALL")
    r = c.ok("UID SORT (REVERSE ARRIVAL) UTF-8 ALL")
    assert [int(x) for x in r.lines("SORT")[0].split()[2:]] == uids[::-1]


def test_thread(server: Server) -> None:
    """RFC 5256 §4/§5: THREAD=REFERENCES links M2 under M1 by References/In-Reply-To:
    "(1 2)(3)"; ORDEREDSUBJECT groups by base subject; the answer is one untagged THREAD."""
    c = setup(server)
    r = c.ok("THREAD REFERENCES UTF-8 ALL")
    (line,) = r.lines("THREAD")
    assert line == b"* THREAD (1 2)(3)"
    r = c.ok("THREAD ORDEREDSUBJECT UTF-8 ALL")
    assert r.lines("THREAD")[0] == b"* THREAD (1 2)(3)"
    r = c.ok("THREAD REFERENCES UTF-8 KEYWORD $Nothing")
    assert r.lines("THREAD")[0].rstrip() == b"* THREAD"
    assert c.cmd("THREAD BOGUS UTF-8 ALL").status in ("BAD", "NO")


def test_thread_deep_chain(server: Server) -> None:
    """RFC 5256 §4: a long reply chain threads as one nested thread (no recursion limit, no hang)."""
    _, c = server.session()
    n = 60
    for i in range(n):
        refs = b"References: " + b" ".join(b"<d%d@x>" % j for j in range(i)) + b"\r\n" if i else b""
        c.append("INBOX", b"Subject: chain\r\nMessage-ID: <d%d@x>\r\n%s\r\nbody\r\n" % (i, refs))
    c.ok("SELECT INBOX")
    r = c.ok("THREAD REFERENCES UTF-8 ALL")
    line = r.lines("THREAD")[0]
    assert line == b"* THREAD (" + b" ".join(b"%d" % i for i in range(1, n + 1)) + b")"
