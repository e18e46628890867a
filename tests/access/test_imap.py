"""IMAP with real clients (imaplib, curl, raw sockets for the protocol corners)."""

from __future__ import annotations

import imaplib
import re
import socket
import ssl
import subprocess
import time

import pytest

from tests.access.conftest import PASSWORD, imap, inbox_files, inbox_messages, message, pop
from tests.conftest import require
from tests.helpers.box import Box
from tests.helpers.wait import wait_for

imaplib.Commands.setdefault("SENDMAIL", ("SELECTED",))
imaplib.Commands.setdefault("MOVE", ("SELECTED",))


def _raw(box: Box) -> socket.socket:
    s = socket.create_connection((box.host("imap"), box.port("imap")), timeout=30)
    assert s.recv(4096).startswith(b"* OK")
    return s


def _read_until(s: socket.socket | ssl.SSLSocket, tag: bytes) -> bytes:
    data = b""
    deadline = time.monotonic() + 30
    while not re.search(rb"(^|\r\n)" + re.escape(tag) + rb" (OK|NO|BAD)[^\r\n]*\r\n", data):
        if time.monotonic() > deadline:
            raise AssertionError(f"no tagged reply {tag!r} in {data!r}")
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_login_only_after_tls_and_capabilities_are_honest(access_box: Box) -> None:
    m = imaplib.IMAP4(access_box.host("imap"), access_box.port("imap"))
    assert {"STARTTLS", "LOGINDISABLED"} <= set(m.capabilities)
    assert not any(c.startswith("AUTH=") for c in m.capabilities)
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        m.login(f"alice@{access_box.domain}", PASSWORD)
    m.starttls(ssl_context=access_box.client_tls())
    caps = set(m.capabilities)
    assert "AUTH=PLAIN" in caps and "LOGINDISABLED" not in caps and "STARTTLS" not in caps
    m.login(f"alice@{access_box.domain}", PASSWORD)
    caps = set(m.capability()[1][0].decode().split())
    assert {"IDLE", "NAMESPACE", "UIDPLUS", "MOVE", "SPECIAL-USE", "X-DRAFT-I01-SENDMAIL", "LITERAL+", "ENABLE",
            "ID", "CONDSTORE", "QRESYNC", "ESEARCH", "IMAP4rev2"} <= caps
    assert "AUTH=PLAIN" not in caps and "STARTTLS" not in caps  # nothing left to authenticate
    m.logout()


def test_wrong_password_is_refused(access_box: Box) -> None:
    m = imaplib.IMAP4_SSL(access_box.host("imaps"), access_box.port("imaps"), ssl_context=access_box.client_tls())
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login(f"alice@{access_box.domain}", "wrong password")
    m.logout()


def test_authenticate_plain_on_implicit_tls(access_box: Box) -> None:
    m = imaplib.IMAP4_SSL(access_box.host("imaps"), access_box.port("imaps"), ssl_context=access_box.client_tls())
    user = f"bob@{access_box.domain}"
    typ, _ = m.authenticate("PLAIN", lambda _: f"\0{user}\0{PASSWORD}".encode())
    assert typ == "OK"
    assert m.select("INBOX")[0] == "OK"
    m.logout()


def test_plaintext_pipelined_behind_starttls_is_discarded(access_box: Box) -> None:
    """CVE-2011-0411 class: a command injected in plaintext after STARTTLS must never run."""
    s = _raw(access_box)
    s.sendall(b"a STARTTLS\r\nb CAPABILITY\r\n")
    reply = b""
    while b"a OK" not in reply:
        reply += s.recv(4096)
    assert b"b OK" not in reply
    t = access_box.client_tls().wrap_socket(s)
    t.sendall(b"c NOOP\r\n")
    after = _read_until(t, b"c")
    assert b"b OK" not in after and b"b BAD" not in after  # b was never executed
    t.close()


def test_append_to_missing_mailbox_says_trycreate_and_failures_are_no(access_box: Box) -> None:
    m = imap(access_box)
    typ, data = m.append("NoSuchFolder", None, None, message("a@x.test", "b@x.test", "x"))
    assert typ == "NO" and b"[TRYCREATE]" in data[0]
    # Unquoted, "*" is not an atom character: a syntax error (BAD), not a traceback.
    with pytest.raises(imaplib.IMAP4.error, match="BAD"):
        m.append("bad*name", None, None, message("a@x.test", "b@x.test", "x"))
    # Quoted it is a name the store refuses: NO.
    typ, data = m.append('"bad*name"', None, None, message("a@x.test", "b@x.test", "x"))
    assert typ == "NO"
    assert m.create("NoSuchFolder")[0] == "OK"
    typ, data = m.append("NoSuchFolder", None, None, message("a@x.test", "b@x.test", "x"))
    assert typ == "OK" and b"[APPENDUID " in data[0]
    m.logout()


def test_list_special_use_namespace_status(access_box: Box) -> None:
    m = imap(access_box)
    typ, lines = m.list()
    listing = {ln.decode().rsplit(" ", 1)[1].strip('"'): ln.decode() for ln in lines}
    assert {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Outbox"} <= set(listing)
    assert "\\Sent" in listing["Sent"] and "\\Trash" in listing["Trash"] and "\\Drafts" in listing["Drafts"]
    assert m.namespace()[1][0] == b'(("" ".")) NIL NIL'
    typ, st = m.status("Sent", "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)")
    assert typ == "OK" and b"UIDVALIDITY" in st[0]
    m.logout()


def test_append_fetch_store_search_copy_move_expunge(access_box: Box) -> None:
    m = imap(access_box, "carol")
    raw = message("carol@example.test", "dan@x.test", "round trip", body="line one\r\n.line two\r\n",
                  extra="Received: from a\r\nReceived: from b\r\n")
    typ, data = m.append("INBOX", r"(\Flagged $Important)", None, raw)
    uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
    m.select("INBOX")
    typ, data = m.uid("FETCH", str(uid), "(FLAGS BODY.PEEK[] RFC822.SIZE BODY.PEEK[HEADER.FIELDS (RECEIVED)])")
    assert data[0][1] == raw  # byte-exact, duplicate header fields kept in order
    assert data[1][1] == b"Received: from a\r\nReceived: from b\r\n\r\n"
    meta = b" ".join(x[0] if isinstance(x, tuple) else x for x in data)
    assert b"$Important" in meta and b"\\Flagged" in meta and b"RFC822.SIZE %d" % len(raw) in meta
    # BODY[] (not PEEK) sets \Seen (RFC 3501 6.4.5).
    m.uid("FETCH", str(uid), "(BODY[TEXT])")
    assert b"\\Seen" in m.uid("FETCH", str(uid), "(FLAGS)")[1][0]
    assert m.uid("SEARCH", None, "KEYWORD", "$Important")[1][0].split() == [str(uid).encode()]
    assert m.uid("SEARCH", None, "SUBJECT", '"round trip"')[1][0].split() == [str(uid).encode()]
    assert m.uid("SEARCH", None, "UNKEYWORD", "$Important", "UID", str(uid))[1][0] == b""
    typ, data = m._simple_command("UID", "COPY", str(uid), "Trash")  # tagged text, not the untagged list
    assert typ == "OK" and data[0].startswith(b"[COPYUID ")
    typ, data = m.uid("MOVE", str(uid), "Junk")
    assert typ == "OK", data
    assert m.uid("SEARCH", None, "UID", str(uid))[1][0] == b""  # moved away
    m.select("Trash")
    m.store("1:*", "+FLAGS", r"(\Deleted)")
    typ, data = m.expunge()
    assert typ == "OK" and data[0] is not None
    assert m.select("Trash")[1][0] == b"0"
    m.logout()
    # Flags and keywords persist across sessions.
    m = imap(access_box, "carol")
    m.select("Junk")
    flags = m.fetch("1:*", "(FLAGS)")[1][-1]
    assert b"$Important" in flags and b"\\Seen" in flags
    m.logout()


def test_idle_reports_new_mail_delivered_by_the_relay(access_box: Box) -> None:
    bob = imap(access_box, "bob")
    bob.select("INBOX")
    exists_before = len(inbox_files(access_box, "bob"))
    tag = bob._new_tag()
    bob.send(tag + b" IDLE\r\n")
    assert bob.readline().startswith(b"+")
    # alice sends bob a message through the Outbox (so through the relay, which delivers into new/).
    alice = imap(access_box, "alice", implicit=True)
    typ, data = alice.append("Outbox", None, None, message("alice@example.test", "bob@example.test", "idle ping"))
    assert typ == "OK", data
    alice.logout()
    bob.sock.settimeout(60)
    line = bob.readline()
    assert re.match(rb"\* (\d+) EXISTS", line), line
    assert int(line.split()[1]) >= exists_before + 1
    bob.send(b"DONE\r\n")
    while not bob.readline().startswith(tag):
        pass
    bob.logout()


def test_uid_sendmail_reaches_recipient_and_sets_submitted(access_box: Box) -> None:
    m = imap(access_box)
    raw = message("alice@example.test", "bob@example.test", "sent with sendmail",
                  extra="Bcc: carol@example.test\r\n")
    typ, data = m.append("Sent", "($SubmitPending)", None, raw)
    uid = re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1).decode()
    m.select("Sent")
    bob_before, carol_before = len(inbox_files(access_box, "bob")), len(inbox_files(access_box, "carol"))
    typ, data = m.uid("SENDMAIL", uid)
    assert typ == "OK", data
    fetches = b" ".join(x for x in m.untagged_responses.get("FETCH", []) if isinstance(x, bytes))
    assert b"$Submitted" in fetches or b"$Submitted" in m.uid("FETCH", uid, "(FLAGS)")[1][0]
    assert b"$SubmitPending" not in m.uid("FETCH", uid, "(FLAGS)")[1][0]
    # A second send of the same message is refused: it is no longer pending.
    assert m.uid("SENDMAIL", uid)[0] == "NO"
    wait_for("delivery to bob", lambda: len(inbox_files(access_box, "bob")) > bob_before)
    wait_for("delivery to carol (Bcc)", lambda: len(inbox_files(access_box, "carol")) > carol_before)
    delivered = [m for m in inbox_messages(access_box, "bob") if b"sent with sendmail" in m]
    assert delivered and b"Bcc:" not in delivered[0]
    m.logout()


def test_uid_sendmail_with_envelope_options_and_forged_from(access_box: Box) -> None:
    m = imap(access_box)
    raw = message("alice@example.test", "nobody-listed@example.test", "explicit envelope")
    typ, data = m.append("Sent", "($SubmitPending)", None, raw)
    uid = re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1).decode()
    m.select("Sent")
    carol_before = len(inbox_files(access_box, "carol"))
    typ, data = m.uid("SENDMAIL", uid, "(FROM alice@example.test RECIPIENT carol@example.test)")
    assert typ == "OK", data
    wait_for("delivery to carol", lambda: len(inbox_files(access_box, "carol")) > carol_before)
    forged = message("mallory@example.test", "bob@example.test", "forged from")
    typ, data = m.append("Sent", "($SubmitPending)", None, forged)
    uid = re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1).decode()
    m.select("Sent")
    typ, data = m.uid("SENDMAIL", uid)
    assert typ == "NO" and data[0].startswith(b"[POLICYDENIED]"), data
    typ, data = m.uid("SENDMAIL", uid, "(FROM bob@example.test RECIPIENT carol@example.test)")
    assert typ == "NO" and data[0].startswith(b"[POLICYDENIED]"), data
    assert b"$SubmitPending" in m.uid("FETCH", uid, "(FLAGS)")[1][0]
    m.logout()


def test_outbox_append_and_copy_send_and_forged_from_is_an_alert(access_box: Box) -> None:
    m = imap(access_box)
    bob_before = len(inbox_files(access_box, "bob"))
    typ, data = m.append("Outbox", None, None, message("alice@example.test", "bob@example.test", "via outbox"))
    assert typ == "OK" and b"APPENDUID" in data[0], data
    wait_for("delivery to bob", lambda: len(inbox_files(access_box, "bob")) > bob_before)
    typ, data = m.append("Outbox", None, None, message("mallory@example.test", "bob@example.test", "forged"))
    assert typ == "NO" and data[0].startswith(b"[ALERT]"), data
    m.create("Outbound")
    for subject in ("copied one", "copied two"):
        m.append("Outbound", None, None, message("alice@example.test", "bob@example.test", subject))
    m.select("Outbound")
    typ, data = m.copy("1:2", "Outbox")
    assert typ == "NO" and data[0].startswith(b"[ALERT]")  # one message per command
    before = len(inbox_files(access_box, "bob"))
    typ, data = m.copy("2", "Outbox")
    assert typ == "OK" and data[0].startswith(b"[COPYUID"), data
    wait_for("delivery of the copied message", lambda: len(inbox_files(access_box, "bob")) > before)
    m.logout()


def test_curl_appends_to_outbox_and_the_message_is_delivered(access_box: Box, tmp_path) -> None:  # type: ignore[no-untyped-def]
    require("curl")
    msg = tmp_path / "msg.eml"
    msg.write_bytes(message("alice@example.test", "bob@example.test", "sent by curl"))
    bob_before = len(inbox_files(access_box, "bob"))
    url = f"imap://{access_box.host('imap')}:{access_box.port('imap')}/Outbox"
    proc = subprocess.run(["curl", "-sS", "-T", str(msg), "--user", f"alice@example.test:{PASSWORD}", url,
                           "--ssl-reqd", "-k"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    wait_for("delivery to bob", lambda: len(inbox_files(access_box, "bob")) > bob_before)
    assert any(b"sent by curl" in m for m in inbox_messages(access_box, "bob"))


class _FromAddress(imaplib.IMAP4_SSL):
    """imaplib from another loopback source address (the limiter keys on the client address)."""

    source = "127.0.0.2"

    def _create_socket(self, timeout):  # type: ignore[no-untyped-def]
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=None)


def test_login_failures_share_the_relays_limiter(access_box: Box) -> None:
    """XAUTHFAIL after each failure; past the limit even the right password gets NO [LIMIT] (not a plain NO)."""
    # Alice has logged in from 127.0.0.1 before, so the per-account limit on new addresses
    # (appliance/ratelimit/limiter.py) that the failures below trip does not apply there.
    imap(access_box).logout()
    limit = access_box.cfg.limits.auth_failures_per_ip
    replies = []
    for _ in range(limit + 1):
        m = _FromAddress(access_box.host("imaps"), access_box.port("imaps"), ssl_context=access_box.client_tls())
        try:
            m.login(f"alice@{access_box.domain}", "wrong password")
        except imaplib.IMAP4.error as exc:
            replies.append(str(exc))
        m.shutdown()
    assert "AUTHENTICATIONFAILED" in replies[0]
    m = _FromAddress(access_box.host("imaps"), access_box.port("imaps"), ssl_context=access_box.client_tls())
    with pytest.raises(imaplib.IMAP4.error, match=r"\[LIMIT\]"):
        m.login(f"alice@{access_box.domain}", PASSWORD)
    m.shutdown()
    imap(access_box).logout()  # other addresses are not affected


def test_append_over_the_size_limit_is_no_toobig(access_box: Box) -> None:
    from tests.access.conftest import MAX_MESSAGE_SIZE

    m = imap(access_box)
    big = message("alice@example.test", "bob@example.test", "big", body="x" * 998 + "\r\n") * (MAX_MESSAGE_SIZE // 1000 + 5)
    typ, data = m.append("Drafts", None, None, big)
    assert typ == "NO" and data[0].startswith(b"[TOOBIG]")
    m.logout()


def test_two_sessions_see_each_others_expunges_and_pop_deletes(access_box: Box) -> None:
    a, b = imap(access_box, "bob"), imap(access_box, "bob", implicit=True)
    a.create("Shared")
    for subject in ("s1", "s2", "s3"):
        a.append("Shared", None, None, message("bob@example.test", "bob@example.test", subject))
    a.select("Shared")
    b.select("Shared")
    a.store("2", "+FLAGS", r"(\Deleted)")
    a.expunge()
    # b still sees 3 messages until it is told; a FETCH of the vanished one is skipped, not an error.
    assert b.fetch("1:3", "(UID)")[0] == "OK"
    b.noop()
    assert b.response("EXPUNGE")[1] == [b"2"]
    assert len(b.fetch("1:*", "(UID)")[1]) == 2
    with pytest.raises(imaplib.IMAP4.error, match="invalid message sequence number"):
        b.fetch("3", "(UID)")
    b.logout()
    # A POP session's DELE, committed at QUIT, shows up in an IMAP session on the same INBOX.
    a.append("INBOX", None, None, message("bob@example.test", "bob@example.test", "for pop"))
    a.select("INBOX")
    p = pop(access_box, "bob")
    p.dele(1)
    p.quit()
    a.noop()
    assert a.response("EXPUNGE")[1] == [b"1"]
    a.logout()


def test_large_fetch_streams_in_order_with_a_pipelined_command(access_box: Box) -> None:
    """A FETCH larger than one batch is produced as the client reads; a command pipelined behind it waits."""
    from services.access.imap.cmd_fetch import BATCH_BYTES
    from tests.access.imapdiff import RawIMAP

    c = RawIMAP(access_box.host("imap"), access_box.port("imap"), access_box.client_tls())
    assert c.command(b'LOGIN "carol@example.test" "%s"' % PASSWORD.encode())[1].startswith(b"OK")
    c.command(b"CREATE Big")
    n = 300  # over BATCH_BYTES of responses: several batches, each written when the last drained
    for i in range(n):
        msg = message("carol@example.test", "x@example.test", f"big {i}", body="x" * 1500 + "\r\n")
        assert c.command(b"APPEND Big", msg)[1].startswith(b"OK")
    c.command(b"SELECT Big")
    c.sock.sendall(b"f FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[TEXT])\r\nn NOOP\r\n")
    seen: list[bytes] = []
    while True:
        r = c.read_response()
        seen.append(r)
        if r.startswith(b"n "):
            break
    fetches = [r for r in seen if b" FETCH (" in r]
    assert sum(len(r) for r in fetches) > BATCH_BYTES
    assert len(fetches) == n
    assert [int(r.split()[1]) for r in fetches] == list(range(1, n + 1))
    assert b"big %d" % (n - 1) in fetches[-1]
    tagged = [r for r in seen if r[:2] in (b"f ", b"n ")]
    assert tagged[0].startswith(b"f OK") and tagged[1].startswith(b"n OK")
    assert seen.index(tagged[0]) > seen.index(fetches[-1])
    c.close()


def test_concurrent_appends_get_ascending_uids_that_survive_a_restart(access_box: Box) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from appliance.supervision import proxy
    from tests.helpers.box import wait_port

    watcher = imap(access_box, "carol")
    watcher.create("Race")
    watcher.select("Race")

    def session(k: int) -> list[int]:
        m = imap(access_box, "carol", implicit=bool(k % 2))
        uids = []
        for i in range(15):
            typ, data = m.append("Race", f"($Batch{k})", None,
                                 message("carol@example.test", "x@example.test", f"race {k} {i}"))
            assert typ == "OK", data
            uids.append(int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1)))
        m.logout()
        return uids

    with ThreadPoolExecutor(4) as pool:
        per_session = list(pool.map(session, range(4)))
    appended = sorted(u for uids in per_session for u in uids)
    assert len(set(appended)) == 60 and all(u == sorted(u) for u in per_session)
    watcher.noop()
    typ, data = watcher.uid("FETCH", "1:*", "(UID FLAGS)")
    listed = [int(re.search(rb"UID (\d+)", x).group(1)) for x in data]
    assert listed == appended  # every message, in ascending UID order
    validity = watcher.status("Race", "(UIDVALIDITY)")[1][0]
    watcher.logout()

    supervisor = proxy(access_box.cfg).supervisor
    supervisor.stopProcess("access")
    supervisor.startProcess("access")
    wait_port(access_box.host("imap"), access_box.port("imap"))
    m = imap(access_box, "carol")
    assert m.status("Race", "(UIDVALIDITY)")[1][0] == validity
    m.select("Race")
    typ, data = m.uid("FETCH", "1:*", "(UID FLAGS)")
    assert [int(re.search(rb"UID (\d+)", x).group(1)) for x in data] == appended
    assert all(b"$Batch" in x for x in data)  # keywords persisted
    m.logout()
