"""CONDSTORE and QRESYNC (RFC 7162) on two sessions."""

from __future__ import annotations

import re

from tests.conformance.client import Conn
from tests.conformance.conftest import Server
from tests.conformance.test_multisession import noop_until


def modseq_of(line: bytes) -> int:
    m = re.search(rb"MODSEQ \((\d+)\)", line)
    assert m, line
    return int(m.group(1))


def highest(r_text: bytes, untagged: list[bytes]) -> int:
    m = re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join([*untagged, r_text]))
    assert m, untagged
    return int(m.group(1))


def filled(server: Server, n: int = 3) -> tuple[str, Conn]:
    login, c = server.session()
    for i in range(n):
        c.append("INBOX", b"Subject: %d\r\n\r\nbody\r\n" % i)
    return login, c


def test_select_condstore_highestmodseq(server: Server) -> None:
    """RFC 7162 §3.1.1/§3.1.2.1: SELECT (CONDSTORE) enables it and answers OK [HIGHESTMODSEQ n];
    FETCH MODSEQ gives each message's mod-sequence; a STORE raises it."""
    _, c = filled(server)
    r = c.ok("SELECT INBOX (CONDSTORE)")
    h0 = highest(r.text, r.untagged)
    r = c.ok("FETCH 1:* (MODSEQ)")
    mods = [modseq_of(x) for x in r.lines("FETCH")]
    assert len(mods) == 3 and max(mods) <= h0
    r = c.ok("STORE 1 +FLAGS (\\Flagged)")
    (line,) = r.lines("FETCH")
    assert modseq_of(line) > h0  # §3.1.3: the FETCH after STORE includes MODSEQ once CONDSTORE is on


def test_store_silent_still_sends_modseq(server: Server) -> None:
    """RFC 7162 §3.1.3: with CONDSTORE enabled, STORE .SILENT still sends FETCH (UID MODSEQ) for each
    changed message (without FLAGS)."""
    _, c = filled(server)
    c.ok("ENABLE CONDSTORE")
    c.ok("SELECT INBOX")
    r = c.ok("STORE 1:2 +FLAGS.SILENT (\\Seen)")
    lines = r.lines("FETCH")
    assert len(lines) == 2 and all(b"MODSEQ" in x and b"FLAGS" not in x for x in lines), r.untagged


def test_store_unchangedsince_modified(server: Server) -> None:
    """RFC 7162 §3.1.3: STORE (UNCHANGEDSINCE m) changes only messages with mod-sequence <= m and answers
    OK [MODIFIED set] naming the others; UNCHANGEDSINCE 0 fails every message."""
    login, c = filled(server)
    c.ok("SELECT INBOX (CONDSTORE)")
    r = c.ok("FETCH 1:* (MODSEQ)")
    base = max(modseq_of(x) for x in r.lines("FETCH"))
    other = server.connect(login)
    other.ok("SELECT INBOX")
    other.ok("STORE 2 +FLAGS (\\Answered)")
    noop_until(c, "FETCH")
    r = c.ok(f"STORE 1:3 (UNCHANGEDSINCE {base}) +FLAGS (\\Flagged)")
    assert r.code() == "MODIFIED 2", r
    r = c.ok("FETCH 1:3 FLAGS")
    flagged = [b"\\Flagged" in x for x in r.lines("FETCH")]
    assert flagged == [True, False, True]
    r = c.ok("STORE 1 (UNCHANGEDSINCE 0) +FLAGS (\\Seen)")
    assert r.code() == "MODIFIED 1"


def test_fetch_changedsince(server: Server) -> None:
    """RFC 7162 §3.1.4: FETCH (CHANGEDSINCE m) returns only messages changed after m, with MODSEQ."""
    _, c = filled(server)
    r = c.ok("SELECT INBOX (CONDSTORE)")
    h0 = highest(r.text, r.untagged)
    c.ok("STORE 3 +FLAGS.SILENT (\\Seen)")
    r = c.ok(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {h0})")
    lines = r.lines("FETCH")
    assert len(lines) == 1 and lines[0].startswith(b"* 3 ") and b"MODSEQ" in lines[0]


def test_search_modseq(server: Server) -> None:
    """RFC 7162 §3.1.5: SEARCH MODSEQ m finds messages with mod-sequence >= m and adds (MODSEQ highest)."""
    _, c = filled(server)
    r = c.ok("SELECT INBOX (CONDSTORE)")
    h0 = highest(r.text, r.untagged)
    c.ok("STORE 2 +FLAGS (\\Draft)")
    r = c.ok(f"SEARCH MODSEQ {h0 + 1}")
    (line,) = r.lines("SEARCH")
    assert re.fullmatch(rb"\* SEARCH 2 \(MODSEQ \d+\)", line), line


def test_status_highestmodseq_grows(server: Server) -> None:
    """RFC 7162 §3.1.2.3: STATUS HIGHESTMODSEQ; it grows with every change (APPEND, STORE, EXPUNGE)."""
    _, c = filled(server)
    def hm() -> int:
        return int(re.search(rb"HIGHESTMODSEQ (\d+)", c.ok("STATUS INBOX (HIGHESTMODSEQ)")
                             .lines("STATUS")[0]).group(1))  # type: ignore[union-attr]
    a = hm()
    c.append("INBOX", b"Subject: more\r\n\r\nx\r\n")
    b = hm()
    c.ok("SELECT INBOX")
    c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    c.ok("EXPUNGE")
    c.ok("CLOSE")
    d = hm()
    assert a < b < d


def test_qresync_select_vanished_earlier(server: Server) -> None:
    """RFC 7162 §3.2.5: SELECT (QRESYNC (uidvalidity modseq)) after an expunge and a flag change by another
    session answers VANISHED (EARLIER) uids and FETCH for the changed message."""
    login, c = filled(server, 4)
    c.ok("ENABLE QRESYNC")
    r = c.ok("SELECT INBOX")
    uidvalidity = int(re.search(rb"UIDVALIDITY (\d+)", b" ".join(r.untagged)).group(1))  # type: ignore[union-attr]
    h0 = highest(r.text, r.untagged)
    uids = [int(x) for x in c.ok("UID SEARCH ALL").lines("SEARCH")[0].split()[2:]]
    c.ok("UNSELECT")
    other = server.connect(login)
    other.ok("SELECT INBOX")
    other.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    other.ok("EXPUNGE")
    other.ok("STORE 3 +FLAGS.SILENT (\\Flagged)")  # seq 3 is now the 4th message
    r = c.ok(f"SELECT INBOX (QRESYNC ({uidvalidity} {h0}))")
    vanished = [x for x in r.untagged if x.upper().startswith(b"* VANISHED")]
    assert vanished == [b"* VANISHED (EARLIER) %d" % uids[1]], r.untagged
    fetches = r.lines("FETCH")
    assert len(fetches) == 1 and b"UID %d" % uids[3] in fetches[0] and b"\\Flagged" in fetches[0]
    assert b"MODSEQ" in fetches[0]


def test_qresync_expunge_is_vanished(server: Server) -> None:
    """RFC 7162 §3.2.7 / §3.2.10: with QRESYNC enabled, EXPUNGE answers VANISHED uids instead of
    * n EXPUNGE, to this session and to another QRESYNC session (at NOOP)."""
    login, c = filled(server, 3)
    c.ok("ENABLE QRESYNC")
    c.ok("SELECT INBOX")
    b = server.connect(login)
    b.ok("ENABLE QRESYNC")
    b.ok("SELECT INBOX")
    uids = [int(x) for x in c.ok("UID SEARCH ALL").lines("SEARCH")[0].split()[2:]]
    c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    r = c.ok("EXPUNGE")
    assert r.lines("EXPUNGE") == [] and [x for x in r.untagged if b"VANISHED" in x] == [b"* VANISHED %d" % uids[0]]
    r = noop_until(b, "VANISHED")
    assert b"* VANISHED %d" % uids[0] in r.untagged


def test_uid_fetch_changedsince_vanished(server: Server) -> None:
    """RFC 7162 §3.2.6: UID FETCH ... (CHANGEDSINCE m VANISHED) answers VANISHED (EARLIER) for UIDs in the
    set expunged since m, then FETCH for the changed ones."""
    _, c = filled(server, 3)
    c.ok("ENABLE QRESYNC")
    r = c.ok("SELECT INBOX")
    h0 = highest(r.text, r.untagged)
    uids = [int(x) for x in c.ok("UID SEARCH ALL").lines("SEARCH")[0].split()[2:]]
    c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    c.ok("EXPUNGE")
    c.ok("STORE 1 +FLAGS.SILENT (\\Seen)")
    r = c.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {h0} VANISHED)")
    assert b"* VANISHED (EARLIER) %d" % uids[0] in r.untagged, r.untagged
    assert len(r.lines("FETCH")) == 1 and b"UID %d" % uids[1] in r.lines("FETCH")[0]
    assert c.cmd(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {h0} VANISHED)").status == "BAD"  # only with UID


def test_qresync_bad_without_enable(server: Server) -> None:
    """RFC 7162 §3.2.5: SELECT (QRESYNC ...) without ENABLE QRESYNC first is BAD."""
    _, c = filled(server, 1)
    assert c.cmd("SELECT INBOX (QRESYNC (1 1))").status == "BAD"


def test_enable_qresync_implies_condstore(server: Server) -> None:
    """RFC 7162 §3.2.3: ENABLE QRESYNC also enables CONDSTORE (FETCH after STORE carries MODSEQ)."""
    _, c = filled(server, 1)
    r = c.ok("ENABLE QRESYNC")
    assert b"QRESYNC" in r.lines("ENABLED")[0].upper()
    c.ok("SELECT INBOX")
    r = c.ok("STORE 1 +FLAGS (\\Seen)")
    assert b"MODSEQ" in r.lines("FETCH")[0]
