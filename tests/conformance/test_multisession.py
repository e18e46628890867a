"""Two sessions on one mailbox, in the style of imaptest scripts: A changes, B must be told.

RFC 3501 §7.4.1 / §5.2 / §5.5 and RFC 9051 §7.5.1 / §5.2: a server sends EXISTS/EXPUNGE/FETCH for other
sessions' changes at the end of any command (NOOP at the latest) and during IDLE (RFC 2177 §3), and
never an EXPUNGE during FETCH/STORE/SEARCH (§7.4.1).
"""

from __future__ import annotations

import time

from tests.conformance.client import Conn, Result
from tests.conformance.conftest import Server

MSG = b"From: a@example.test\r\nSubject: m%d\r\n\r\nbody %d\r\n"


def msg(i: int) -> bytes:
    return MSG % (i, i)


def noop_until(c: Conn, want: str, timeout: float = 10.0) -> Result:
    """NOOP until an untagged WANT arrives (the server may take a moment to notice a change)."""
    deadline = time.monotonic() + timeout
    seen: list[bytes] = []
    while True:
        r = c.ok("NOOP")
        seen += r.untagged
        if r.lines(want):
            r.untagged = seen
            return r
        if time.monotonic() > deadline:
            raise AssertionError(f"no untagged {want} after NOOPs for {timeout}s; got {seen}")
        time.sleep(0.2)


def two(server: Server, n: int = 0) -> tuple[Conn, Conn]:
    login, a = server.session()
    for i in range(1, n + 1):
        a.append("INBOX", msg(i))
    b = server.connect(login)
    a.ok("SELECT INBOX")
    b.ok("SELECT INBOX")
    return a, b


def test_append_by_other_session_exists_on_noop(server: Server) -> None:
    """RFC 3501 §7.3.1 / §5.2: B learns a new message from an untagged EXISTS (at NOOP at the latest)."""
    a, b = two(server, 1)
    a.append("INBOX", msg(2))
    r = noop_until(b, "EXISTS")
    assert r.numbers("EXISTS")[-1] == 2


def test_append_during_idle(server: Server) -> None:
    """RFC 2177 §3: while B idles, the server sends EXISTS for A's APPEND without B sending anything."""
    a, b = two(server, 1)
    tag = b.idle()
    a.append("INBOX", msg(2))
    got = b.idle_until(lambda x: x.endswith(b" EXISTS"))
    assert b"* 2 EXISTS" in got, got
    assert b.done(tag).status == "OK"


def test_expunge_by_other_session(server: Server) -> None:
    """RFC 3501 §7.4.1: A's EXPUNGE reaches B as ``* n EXPUNGE`` with B's sequence numbers, at NOOP."""
    a, b = two(server, 3)
    a.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    r = a.ok("EXPUNGE")
    assert r.numbers("EXPUNGE") == [2]
    r = noop_until(b, "EXPUNGE")
    assert r.numbers("EXPUNGE") == [2]
    r = b.ok("FETCH 1:* (UID)")
    assert len(r.lines("FETCH")) == 2


def test_expunge_during_idle(server: Server) -> None:
    """RFC 2177 §3 / RFC 3501 §7.4.1: an expunge by A is pushed to an idling B."""
    a, b = two(server, 2)
    tag = b.idle()
    a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    a.ok("EXPUNGE")
    got = b.idle_until(lambda x: x == b"* 1 EXPUNGE")
    assert b"* 1 EXPUNGE" in got, got
    assert b.done(tag).status == "OK"


def test_no_expunge_during_fetch(server: Server) -> None:
    """RFC 3501 §7.4.1: EXPUNGE must not be sent during FETCH/STORE/SEARCH (sequence numbers would shift);
    the server delivers it at the next NOOP instead."""
    a, b = two(server, 3)
    a.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")
    a.ok("EXPUNGE")
    time.sleep(0.5)
    for cmd in ("FETCH 1:* (FLAGS)", "STORE 1 +FLAGS (\\Flagged)", "SEARCH ALL"):
        r = b.ok(cmd)
        assert not r.lines("EXPUNGE"), (cmd, r.untagged)
    r = noop_until(b, "EXPUNGE")
    assert r.numbers("EXPUNGE") == [3]


def test_store_by_other_session_flags_fetch(server: Server) -> None:
    """RFC 3501 §7.4.2 / §5.2: A's flag change reaches B as an untagged FETCH (FLAGS ...) at NOOP."""
    a, b = two(server, 2)
    a.ok("STORE 2 +FLAGS (\\Flagged)")
    r = noop_until(b, "FETCH")
    (line,) = r.lines("FETCH")
    assert line.startswith(b"* 2 FETCH") and b"\\Flagged" in line


def test_store_during_idle(server: Server) -> None:
    """RFC 2177 §3: flag changes by A are pushed to an idling B as FETCH FLAGS."""
    a, b = two(server, 1)
    tag = b.idle()
    a.ok("STORE 1 +FLAGS (\\Answered)")
    got = b.idle_until(lambda x: b"FETCH" in x)
    assert any(x.startswith(b"* 1 FETCH") and b"\\Answered" in x for x in got), got
    assert b.done(tag).status == "OK"


def test_copy_into_other_sessions_mailbox(server: Server) -> None:
    """RFC 3501 §6.4.7: COPY appends to the destination; a session with it selected sees EXISTS (and the
    copy is \\Recent for exactly one session, §2.3.2)."""
    login, a = server.session()
    a.ok("CREATE Dest")
    a.append("INBOX", msg(1))
    a.append("INBOX", msg(2))
    b = server.connect(login)
    b.ok("SELECT Dest")
    a.ok("SELECT INBOX")
    r = a.ok("COPY 1:2 Dest")
    assert not r.lines("EXPUNGE")
    r = noop_until(b, "EXISTS")
    assert r.numbers("EXISTS")[-1] == 2
    r = b.ok("FETCH 1:2 FLAGS")
    assert all(b"\\Recent" in x for x in r.lines("FETCH"))


def test_move_responses_and_other_sessions(server: Server) -> None:
    """RFC 6851 §3.3/§4.3: MOVE answers COPYUID (UIDPLUS) then EXPUNGE for each moved message in the source;
    the destination's other session sees EXISTS, the source's other session sees EXPUNGE."""
    login, a = server.session()
    a.ok("CREATE Dest")
    for i in range(1, 4):
        a.append("INBOX", msg(i))
    b = server.connect(login)
    b.ok("SELECT Dest")
    c = server.connect(login)
    c.ok("SELECT INBOX")
    a.ok("SELECT INBOX")
    r = a.ok("MOVE 2:3 Dest")
    assert sorted(r.numbers("EXPUNGE")) == [2, 2] or r.numbers("EXPUNGE") == [3, 2] or \
        r.numbers("EXPUNGE") == [2, 2], r.untagged
    assert any(b"COPYUID" in u for u in r.untagged) or (r.code() or "").startswith("COPYUID")
    r = a.ok("FETCH 1:* UID")
    assert len(r.lines("FETCH")) == 1
    r = noop_until(b, "EXISTS")
    assert r.numbers("EXISTS")[-1] == 2
    r = noop_until(c, "EXPUNGE")
    assert len(r.numbers("EXPUNGE")) == 2


def test_uid_move_expunge_by_seq(server: Server) -> None:
    """RFC 6851 §3.3: UID MOVE's untagged EXPUNGE responses carry sequence numbers (not UIDs)."""
    _, a = server.session()
    a.ok("CREATE Dest")
    for i in range(1, 6):
        a.append("INBOX", msg(i))
    a.ok("SELECT INBOX")
    r = a.ok("UID MOVE 5 Dest")
    assert r.numbers("EXPUNGE") == [5]


def test_expunge_responses_decrement(server: Server) -> None:
    """RFC 3501 §7.4.1: each EXPUNGE decrements later numbers at once: expunging 2, 3 and 4 of 5
    is reported as 2 2 2 (or 4 3 2), never 2 3 4."""
    _, a = server.session()
    for i in range(1, 6):
        a.append("INBOX", msg(i))
    a.ok("SELECT INBOX")
    a.ok("STORE 2:4 +FLAGS.SILENT (\\Deleted)")
    r = a.ok("EXPUNGE")
    assert r.numbers("EXPUNGE") in ([2, 2, 2], [4, 3, 2]), r.untagged
    r = a.ok("FETCH 1:* (UID)")
    assert len(r.lines("FETCH")) == 2


def test_uid_expunge(server: Server) -> None:
    """RFC 4315 §2.1: UID EXPUNGE removes only the \\Deleted messages in the UID set."""
    _, a = server.session()
    for i in range(1, 4):
        a.append("INBOX", msg(i))
    a.ok("SELECT INBOX")
    a.ok("STORE 1:3 +FLAGS.SILENT (\\Deleted)")
    r = a.ok("UID FETCH 2 UID")
    uid2 = int(r.lines("FETCH")[0].split(b"UID ")[1].rstrip(b")"))
    r = a.ok(f"UID EXPUNGE {uid2}")
    assert r.numbers("EXPUNGE") == [2]
    r = a.ok("SEARCH DELETED")
    assert r.lines("SEARCH")[0].split()[2:] == [b"1", b"2"]


def test_recent_exactly_once(server: Server) -> None:
    """RFC 3501 §2.3.2: \\Recent is set for exactly one session: the first to select after delivery.
    A second session selecting later sees RECENT 0; STATUS RECENT counts it (§6.3.10)."""
    login, a = server.session()
    a.append("INBOX", msg(1))
    a.append("INBOX", msg(2))
    r = a.ok("STATUS INBOX (RECENT MESSAGES)")
    assert b"RECENT 2" in r.lines("STATUS")[0]
    r = a.ok("SELECT INBOX")
    assert r.numbers("RECENT") == [2]
    r = a.ok("SEARCH RECENT")
    assert r.lines("SEARCH")[0].split()[2:] == [b"1", b"2"]
    r = a.ok("SEARCH NEW")
    assert r.lines("SEARCH")[0].split()[2:] == [b"1", b"2"]
    b = server.connect(login)
    r = b.ok("SELECT INBOX")
    assert r.numbers("RECENT") == [0]
    r = b.ok("SEARCH RECENT")
    assert r.lines("SEARCH")[0].split()[2:] == []
    r = b.ok("SEARCH OLD")
    assert r.lines("SEARCH")[0].split()[2:] == [b"1", b"2"]
    r = b.ok("FETCH 1 FLAGS")
    assert b"\\Recent" not in r.lines("FETCH")[0]


def test_recent_goes_to_selected_session(server: Server) -> None:
    """RFC 3501 §2.3.2 / §7.3.2: a message arriving while A has the mailbox selected is \\Recent in A
    (reported as RECENT with the EXISTS); B, selecting afterwards, does not get it."""
    login, a = server.session()
    a.ok("SELECT INBOX")
    c = server.connect(login)
    c.append("INBOX", msg(1))
    r = noop_until(a, "EXISTS")
    assert r.numbers("RECENT")[-1:] == [1]
    r = a.ok("FETCH 1 FLAGS")
    assert b"\\Recent" in r.lines("FETCH")[0]
    b = server.connect(login)
    r = b.ok("EXAMINE INBOX")
    assert r.numbers("RECENT") == [0]


def test_examine_does_not_claim_recent(server: Server) -> None:
    """RFC 3501 §6.3.2: EXAMINE is read-only; it does not clear \\Recent for a later SELECT (Dovecot and
    Cyrus keep \\Recent for the next read-write session)."""
    login, a = server.session()
    a.append("INBOX", msg(1))
    r = a.ok("EXAMINE INBOX")
    assert r.numbers("EXISTS") == [1]
    assert b"[READ-ONLY]" in r.text
    a.cmd("STORE 1 +FLAGS (\\Seen)")  # NO, or OK without effect (Dovecot): read-only either way
    a.ok("CLOSE")
    r = a.ok("SELECT INBOX")
    assert b"[READ-WRITE]" in r.text
    assert r.numbers("RECENT") == [1]
    r = a.ok("FETCH 1 FLAGS")
    assert b"\\Seen" not in r.lines("FETCH")[0]


def test_copy_into_selected_mailbox_exists(server: Server) -> None:
    """RFC 3501 §6.4.7 / §7.3.1: COPY into the selected mailbox itself is answered with EXISTS for the new
    message count (by the end of the COPY or at the next NOOP)."""
    _, a = server.session()
    a.append("INBOX", msg(1))
    a.ok("SELECT INBOX")
    r = a.ok("COPY 1 INBOX")
    seen = r.numbers("EXISTS") + a.ok("NOOP").numbers("EXISTS")
    assert seen[-1:] == [2], seen


def test_check_and_readonly_close(server: Server) -> None:
    """RFC 3501 §6.4.1 CHECK is OK; §6.4.2 CLOSE on an EXAMINEd mailbox expunges nothing."""
    _, a = server.session()
    a.append("INBOX", msg(1), flags="\\Deleted")
    a.ok("SELECT INBOX")
    a.ok("CHECK")
    a.ok("EXAMINE INBOX")
    a.ok("CLOSE")
    r = a.ok("STATUS INBOX (MESSAGES)")
    assert b"MESSAGES 1" in r.lines("STATUS")[0]

