"""POP3 with real clients: poplib, fetchmail and getmail6; XTND XMIT through the relay."""

from __future__ import annotations

import os
import poplib
import socket
import subprocess
import time
from pathlib import Path

import pytest

from appliance.mailstore import maildir_path
from tests.access.conftest import MAX_MESSAGE_SIZE, PASSWORD, imap, inbox_files, inbox_messages, message, pop
from tests.conftest import require
from tests.helpers.box import Box, pids_under
from tests.helpers.wait import wait_for


def _deliver_through_relay(box: Box, to: str, subjects: list[str]) -> list[bytes]:
    """alice sends through the Outbox; returns the contents of TO's Maildir once all have arrived."""
    before = len(inbox_files(box, to))
    m = imap(box, "alice")
    bodies = ["Plain body.\r\n", ".A line starting with a dot\r\n..two dots\r\n.\r\nend\r\n",
              "From the start of a line\r\n>From quoted\r\n\r\n\r\ntrailing blank lines\r\n"]
    for i, subject in enumerate(subjects):
        typ, data = m.append("Outbox", None, None,
                             message("alice@example.test", f"{to}@example.test", subject, body=bodies[i % 3]))
        assert typ == "OK", data
    m.logout()
    return wait_for(f"{len(subjects)} deliveries to {to}",
                    lambda: (f := inbox_messages(box, to)) and len(f) >= before + len(subjects) and f)



def _assert_retrieved(proc: subprocess.CompletedProcess[str], out: Path, files: list[bytes]) -> None:
    """The client exited 0 and wrote exactly FILES (byte-identical) into OUT."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = sorted(f.read_bytes() for f in out.iterdir())
    assert len(got) == len(files) >= 3
    assert got == sorted(files)

def test_capa_stls_and_no_login_before_tls(access_box: Box) -> None:
    p = poplib.POP3(access_box.host("pop3"), access_box.port("pop3"), timeout=30)
    caps = p.capa()
    assert "STLS" in caps and "USER" not in caps and "UIDL" in caps and "TOP" in caps
    with pytest.raises(poplib.error_proto, match="TLS"):
        p.user("alice@example.test")
    p._putcmd("XTND XMIT")
    with pytest.raises(poplib.error_proto):
        p._getresp()  # no sending before TLS and login
    p.stls(context=access_box.client_tls())
    assert "USER" in p.capa() and "STLS" not in p.capa()
    p._putcmd("XTND XMIT")
    with pytest.raises(poplib.error_proto, match="Log in"):
        p._getresp()
    p.user("alice@example.test")
    p.pass_(PASSWORD)
    p.quit()


def test_plaintext_pipelined_behind_stls_is_discarded(access_box: Box) -> None:
    s = socket.create_connection((access_box.host("pop3"), access_box.port("pop3")), timeout=30)
    assert s.recv(1024).startswith(b"+OK")
    s.sendall(b"STLS\r\nUSER alice@example.test\r\n")
    reply = b""
    while b"\r\n" not in reply:
        reply += s.recv(1024)
    assert reply.startswith(b"+OK") and reply.count(b"\r\n") == 1
    t = access_box.client_tls().wrap_socket(s)
    t.sendall(b"PASS " + PASSWORD.encode() + b"\r\n")
    # Had the plaintext USER run, this would log in; it must say USER first.
    assert t.recv(1024).startswith(b"-ERR")
    t.close()


def test_wrong_password_and_implicit_tls(access_box: Box) -> None:
    p = poplib.POP3_SSL(access_box.host("pop3s"), access_box.port("pop3s"), context=access_box.client_tls(),
                        timeout=30)
    p.user("alice@example.test")
    with pytest.raises(poplib.error_proto, match="AUTH"):
        p.pass_("wrong")
    p.user("alice@example.test")
    p.pass_(PASSWORD)
    p.quit()


def test_uidl_top_retr_dele(access_box: Box) -> None:
    files = _deliver_through_relay(access_box, "bob", ["pop one", "pop two"])
    p = pop(access_box, "bob")
    count, _ = p.stat()
    assert count == len(files)
    uidl = p.uidl()[1]
    top = b"\r\n".join(p.top(count, 0)[1])
    assert b"Subject:" in top and b"Plain body" not in top and b"dot" not in top
    # poplib un-stuffs dots and strips CRLF: what remains is the delivered file, byte for byte.
    retrieved = {b"\n".join(p.retr(i)[1]) + b"\n" for i in range(1, count + 1)}
    assert retrieved == set(files)
    p.dele(count)
    p.quit()
    p = pop(access_box, "bob")
    assert p.stat()[0] == count - 1
    assert p.uidl()[1] == uidl[:-1]  # unique ids are stable across sessions
    p.quit()


def test_xtnd_xmit_sends_and_refuses(access_box: Box) -> None:
    before = len(inbox_files(access_box, "carol"))
    p = pop(access_box, "alice")
    p._putcmd("XTND XMIT")
    assert p._getresp() == b"+OK Start sending message."
    for line in message("alice@example.test", "carol@example.test", "via xtnd", body="..dot\r\nx\r\n").split(b"\r\n"):
        p._putline(line)
    p._putline(b".")
    resp = p._getresp()
    assert resp.startswith(b"+OK") and b"queued" in resp
    wait_for("delivery to carol", lambda: len(inbox_files(access_box, "carol")) > before)
    assert any(b"\n.dot\nx\n" in m for m in inbox_messages(access_box, "carol"))

    p._putcmd("XTND XMIT")
    p._getresp()
    for line in message("mallory@example.test", "carol@example.test", "forged").split(b"\r\n"):
        p._putline(line)
    p._putline(b".")
    with pytest.raises(poplib.error_proto):
        p._getresp()

    # Size-limited while reading: the server keeps reading but refuses at the end.
    p._putcmd("XTND XMIT")
    p._getresp()
    for line in message("alice@example.test", "carol@example.test", "too big").split(b"\r\n"):
        p._putline(line)
    chunk = b"x" * 998
    for _ in range(MAX_MESSAGE_SIZE // 1000 + 10):
        p._putline(chunk)
    p._putline(b".")
    with pytest.raises(poplib.error_proto, match="size"):
        p._getresp()
    assert p.noop().startswith(b"+OK")  # the session is still usable
    p.quit()


def test_fetchmail_retrieves_the_mailbox_byte_identical(access_box: Box, tmp_path: Path) -> None:
    require("fetchmail")
    files = _deliver_through_relay(access_box, "carol", ["fm one", "fm two", "fm three"])
    out = tmp_path / "out"
    out.mkdir()
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        "set invisible\n"
        f'poll {access_box.host("pop3")} proto POP3 port {access_box.port("pop3")} '
        f'user "carol@example.test" password "{PASSWORD}" '
        f'sslproto "TLS1.2+" sslcertck sslcommonname "{access_box.cfg.box.hostname}" sslcertfile "{access_box.cfg.tls.cert}" keep '
        f"mda \"/bin/sh -c 'cat > {out}/msg.$$'\"\n"
    )
    rc.chmod(0o600)
    env = {**os.environ, "HOME": str(tmp_path), "FETCHMAILHOME": str(tmp_path)}
    proc = subprocess.run(["fetchmail", "-f", str(rc), "--nosyslog", "-v"], capture_output=True, text=True,
                          timeout=120, env=env)
    _assert_retrieved(proc, out, files)


def test_getmail6_retrieves_the_mailbox_byte_identical(access_box: Box, tmp_path: Path) -> None:
    require("getmail")
    files = _deliver_through_relay(access_box, "carol", ["gm one", "gm two", "gm three"])
    out = tmp_path / "out"
    out.mkdir()
    rc = tmp_path / "getmailrc"
    rc.write_text(
        "[retriever]\ntype = SimplePOP3SSLRetriever\n"
        f"server = {access_box.host('pop3s')}\nport = {access_box.port('pop3s')}\n"
        f"username = carol@example.test\npassword = {PASSWORD}\nca_certs = {access_box.cfg.tls.cert}\n"
        # An external MDA, since getmail refuses Maildir delivery as root (PEERS.md).
        "[destination]\ntype = MDA_external\npath = /bin/sh\n"
        f'arguments = ("-c", "cat > {out}/msg.$$$$")\nallow_root_commands = true\nunixfrom = false\n'
        "[options]\nread_all = true\ndelete = false\ndelivered_to = false\nreceived = false\n"
        "message_log_syslog = false\n"
    )
    proc = subprocess.run(["getmail", f"--rcfile={rc}", f"--getmaildir={tmp_path}"], capture_output=True,
                          text=True, timeout=120)
    _assert_retrieved(proc, out, files)


# --- streaming and bounded memory (issue 13 item 4: POP RETR streamed) -----------------------------


def _access_rss_kb(box: Box) -> int:
    """Resident memory of the box's access service process."""
    for pid in pids_under(box.dir):
        proc = Path(f"/proc/{pid}")
        try:
            if b"services.access" in (proc / "cmdline").read_bytes():
                status = (proc / "status").read_text()
                return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:")))
        except (OSError, StopIteration):
            continue
    raise AssertionError("no access service process found")


def _big_mailbox(box: Box, local: str) -> bytes:
    """LOCAL gets one 2 MB message (LF line ends, dot lines) written as the relay writes mail; returns it."""
    address = box.add_user(local, PASSWORD)
    root = maildir_path(box.cfg.paths.mail_dir, address)
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    data = b"From: x@example.test\nSubject: big\n\n" + b"".join(b".%06d %s\n" % (i, b"y" * 990) for i in range(2000))
    (root / "tmp" / "1764590000.M1P1.big").write_bytes(data)
    (root / "tmp" / "1764590000.M1P1.big").rename(root / "new" / "1764590000.M1P1.big")
    return data


def test_pipelined_retrs_are_streamed_at_the_clients_pace(access_box: Box) -> None:
    data = _big_mailbox(access_box, "erin")
    p = pop(access_box, "erin")
    before = _access_rss_kb(access_box)
    count = 40  # 80 MB of replies asked for in one packet; the client reads none of it yet
    p.sock.sendall(b"RETR 1\r\n" * count)
    # Unread replies stay in the kernel's socket buffers, not in the server: it stops producing.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        time.sleep(0.2)
        assert _access_rss_kb(access_box) - before < 30_000, "the server is buffering replies the client has not read"
    expected = data.split(b"\n")[:-1]  # the lines as stored, dots and all
    for _ in range(count):
        status, lines, _ = p._getlongresp()  # poplib un-stuffs the dots
        assert status == b"+OK %d octets" % (len(data) + data.count(b"\n")) and lines == expected
    assert p.stat()[0] == 1
    p.quit()


def test_a_client_gone_mid_retr_leaves_no_lock_behind(access_box: Box) -> None:
    if not (maildir_path(access_box.cfg.paths.mail_dir, f"erin@{access_box.domain}") / "new").exists():
        _big_mailbox(access_box, "erin")
    p = pop(access_box, "erin")
    p.sock.sendall(b"RETR 1\r\nRETR 1\r\nRETR 1\r\n")
    assert p.sock.recv(100).startswith(b"+OK")
    # No QUIT: the connection just ends (RFC 1939 §6: nothing is deleted), and the maildrop lock goes.
    p.sock.shutdown(socket.SHUT_RDWR)
    p.file.close()
    p.sock.close()
    wait_for("the maildrop lock to be released", lambda: _try_login(access_box, "erin"))


def _try_login(box: Box, local: str) -> bool:
    try:
        p = pop(box, local)
    except poplib.error_proto as exc:
        assert b"IN-USE" in str(exc).encode(), exc
        return False
    assert p.stat()[0] == 1
    p.quit()
    return True
