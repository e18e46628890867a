"""Several sessions on one mailbox: untagged updates at the points RFC 3501 §7 / RFC 9051 §7 allow,
\\Recent across sessions, change notification into IDLE (also on a 100,000-message INBOX),
the per-user+IP connection cap, and bad mailbox names answered without a traceback."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

from tests.access.conftest import PASSWORD, imap, message, raw_login, raw_ok
from tests.access.imapdiff import RawIMAP
from tests.helpers.box import Box


def _login(box: Box, user: str = "alice") -> RawIMAP:
    return raw_login(box, user, timeout=120)


_ok = raw_ok


def _idle(c: RawIMAP) -> bytes:
    tag = b"idle%d" % c.n
    c.sock.sendall(tag + b" IDLE\r\n")
    assert c.readline().startswith(b"+")
    return tag


def _until(c: RawIMAP, pattern: bytes) -> bytes:
    """Read untagged responses until one matches PATTERN (the socket timeout bounds the wait)."""
    while True:
        r = c.read_response()
        if re.search(pattern, r):
            return r


def _done(c: RawIMAP, tag: bytes) -> list[bytes]:
    c.sock.sendall(b"DONE\r\n")
    seen = []
    while not (r := c.read_response()).startswith(tag + b" "):
        seen.append(r)
    assert r.startswith(tag + b" OK"), r
    return seen


def test_recent_goes_to_one_session_only(access_box: Box) -> None:
    a, b = _login(access_box, "bob"), _login(access_box, "bob")
    _ok(a, b"CREATE Recent")
    _ok(a, b"SELECT Recent")
    _ok(b, b"SELECT Recent")
    other = _login(access_box, "bob")  # a third session, without the mailbox selected, delivers
    _ok(other, b"APPEND Recent", message("x@x.test", "bob@example.test", "recent one"))
    other.close()
    # a sees the new message first (NOOP), so a gets \Recent; b was told the EXISTS too, but
    # RFC 3501 §2.3.2: only one session sees a message as \Recent.
    untagged = _ok(a, b"NOOP")
    assert b"* 1 EXISTS" in untagged and b"* 1 RECENT" in untagged
    assert b"\\Recent" in _ok(a, b"FETCH 1 (FLAGS)")[0]
    untagged = _ok(b, b"NOOP") + _ok(b, b"FETCH 1 (FLAGS)")
    assert b"\\Recent" not in b" ".join(untagged)
    assert _ok(a, b"SEARCH RECENT") == [b"* SEARCH 1"] and _ok(b, b"SEARCH RECENT") == [b"* SEARCH"]
    assert _ok(b, b"STATUS Recent (RECENT MESSAGES)") == [b'* STATUS "Recent" (RECENT 0 MESSAGES 1)']
    a.close()
    b.close()


def test_expunge_by_another_session_waits_for_a_command_that_may_report_it(access_box: Box) -> None:
    a, b = _login(access_box, "carol"), _login(access_box, "carol")
    _ok(a, b"CREATE Expunge")
    for i in range(3):
        _ok(a, b"APPEND Expunge", message("x@x.test", "carol@example.test", f"exp {i}"))
    _ok(a, b"SELECT Expunge")
    _ok(b, b"SELECT Expunge")
    _ok(a, b"STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert _ok(a, b"EXPUNGE") == [b"* 2 EXPUNGE"]
    # RFC 3501 §7.4.1: no EXPUNGE while answering FETCH, STORE or SEARCH; numbers do not move.
    untagged = _ok(b, b"FETCH 1:3 (UID)")
    assert not any(u.endswith(b"EXPUNGE") for u in untagged)
    assert [re.search(rb"UID (\d+)", u).group(1) for u in untagged if b"FETCH" in u] == [b"1", b"3"]
    assert not any(u.endswith(b"EXPUNGE") for u in _ok(b, b"SEARCH ALL"))
    # A UID command may report it (RFC 3501 §7.4.1 note).
    untagged = _ok(b, b"UID FETCH 3 (FLAGS)")
    assert b"* 2 EXPUNGE" in untagged
    assert [u for u in _ok(b, b"FETCH 1:* (UID)") if b"FETCH" in u] == [b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 3)"]
    a.close()
    b.close()


def test_flag_changes_reach_the_other_sessions_idle(access_box: Box) -> None:
    a, b = _login(access_box, "alice"), _login(access_box, "alice")
    _ok(a, b"CREATE Flags")
    _ok(a, b"APPEND Flags", message("x@x.test", "alice@example.test", "flag me"))
    _ok(a, b"SELECT Flags")
    _ok(b, b"SELECT Flags")
    tag = _idle(b)
    scraped = _metrics(access_box)
    assert re.search(r"^access_imap_idle_sessions [1-9]", scraped, re.M), scraped
    assert re.search(r'^access_imap_commands_total\{command="SELECT",result="OK"\} [1-9]', scraped, re.M)
    assert re.search(r'^access_sessions_open\{protocol="imap"\} [1-9]', scraped, re.M)
    _ok(a, b"STORE 1 +FLAGS ($Label1 \\Flagged)")  # a keyword lives only in the index: no file event
    r = _until(b, rb"FETCH \(FLAGS")
    assert b"$Label1" in r and b"\\Flagged" in r
    _ok(a, b"STORE 1 +FLAGS.SILENT (\\Deleted)")
    _ok(a, b"EXPUNGE")
    assert _until(b, rb"EXPUNGE") == b"* 1 EXPUNGE"  # IDLE may report expunges at once (RFC 2177)
    _done(b, tag)
    a.close()
    b.close()


def _metrics(box: Box) -> str:
    """The access service's Prometheus page (listeners.access_metrics, loopback)."""
    url = f"http://{box.host('access_metrics')}:{box.port('access_metrics')}/metrics"
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode()


def _write_maildir(new: Path, count: int) -> None:
    new.mkdir(parents=True, exist_ok=True)
    for d in ("cur", "tmp"):
        (new.parent / d).mkdir(exist_ok=True)
    stamp = int(time.time()) - 86400
    for i in range(count):
        body = message("bulk@x.test", "dora@example.test", f"bulk {i}")
        (new / f"{stamp}.M{i}P1.bulk").write_bytes(body)


def test_delivery_wakes_ten_idle_sessions_on_a_100000_message_inbox(access_box: Box) -> None:
    """Issue 13: a delivery reaches every IDLE session on the folder; the 11th connection of the
    user from the same address is refused (per-user+IP cap, default 10)."""
    n = 100_000
    address = access_box.add_user("dora")
    inbox = access_box.maildir(address)
    _write_maildir(inbox / "new", n)  # as if delivered while nobody was logged in
    sessions = []
    for _ in range(10):
        c = _login(access_box, "dora")
        untagged = _ok(c, b"SELECT INBOX")
        assert b"* %d EXISTS" % n in untagged
        sessions.append((c, _idle(c)))
    extra = RawIMAP(access_box.host("imap"), access_box.port("imap"), access_box.client_tls())
    extra.sock.sendall(b'x LOGIN "%s" "%s"\r\n' % (address.encode(), PASSWORD.encode()))
    assert extra.read_response().startswith(b"* BYE [UNAVAILABLE]")
    extra.sock.close()
    alice = imap(access_box, "alice")
    typ, data = alice.append("Outbox", None, None, message("alice@example.test", address, "wake up"))
    assert typ == "OK", data
    alice.logout()
    for c, tag in sessions:
        assert _until(c, rb"EXISTS") == b"* %d EXISTS" % (n + 1)
        _done(c, tag)
        c.close()


def test_bad_mailbox_names_get_bad_or_no_never_a_traceback(access_box: Box) -> None:
    c = _login(access_box, "bob")
    refused = [b'CREATE "a..b"', b'CREATE "."', b"SELECT &AGE-x", b"SELECT &Jjo", b"DELETE NoSuchBox",
               b"RENAME NoSuch Other", b"CREATE *", b'STATUS "" (MESSAGES)', b"CREATE", b"SELECT a b"]
    for cmd in refused:
        _, tagged = c.command(cmd)
        assert tagged.startswith((b"NO", b"BAD")), (cmd, tagged)
    # Names the store may or may not accept: whatever the answer, it is a tagged one.
    for cmd in (b'SELECT "a\\b"', b"CREATE INBOX.child.", b'CREATE "~home"', b'LIST "" &-%', b'SUBSCRIBE ""'):
        _, tagged = c.command(cmd)
        assert tagged.startswith((b"OK", b"NO", b"BAD")), (cmd, tagged)
    _, tagged = c.command(b"SELECT", b"\xff\xfe\xfd")  # 8-bit, not UTF-8, as a literal
    assert tagged.startswith((b"NO", b"BAD")), tagged
    c.sock.sendall(b"z SELECT \"caf\xc3\xa9\"\r\n")  # 8-bit in a quoted string before IMAP4rev2/UTF8
    assert c.read_response().startswith((b"z NO", b"z BAD"))
    assert _ok(c, b"NOOP") == []  # the session survived all of it
    c.close()
    log = (access_box.dir / "log" / "access.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def test_pipelined_commands_run_in_order_while_the_client_does_not_read(access_box: Box) -> None:
    """50,000 pipelined commands (over a megabyte in, more out) from a client that reads nothing
    for a while: the server pauses instead of buffering, then answers every one, in order."""
    import threading

    c = _login(access_box, "carol")
    n = 50_000
    payload = b"".join(b"p%d NOOP\r\n" % i for i in range(n))
    sender = threading.Thread(target=c.sock.sendall, args=(payload,))
    sender.start()
    time.sleep(2)  # not a timing assert: only so that the server meets a client that does not read
    tags = []
    while len(tags) < n:
        r = c.readline()
        m = re.match(rb"p(\d+) OK", r)
        assert m, r
        tags.append(int(m.group(1)))
    sender.join(timeout=60)
    assert tags == list(range(n))
    assert _ok(c, b"NOOP") == []
    c.close()
