"""offlineimap (offlineimap3) one sync, and fetchmail / getmail6 over IMAP (their POP3 runs are in
tests/access/test_pop3.py): each must finish without a protocol complaint and get every message."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.access.conftest import PASSWORD, imap, message
from tests.conftest import require
from tests.helpers.box import Box

SUBJECTS = ["first sync", "second sync", "third sync"]


def _fill(box: Box, local: str) -> str:
    address = box.add_user(local, PASSWORD)
    m = imap(box, local)
    for s in SUBJECTS:
        assert m.append("INBOX", None, None, message("sender@example.net", address, s))[0] == "OK"
    m.logout()
    return address


def _no_complaint(proc: subprocess.CompletedProcess[str], who: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{who} exited {proc.returncode}:\n{out[-4000:]}"
    for word in ("ERROR", "Error", "error:", "Traceback", "protocol error", "unexpected", "BAD"):
        assert word not in out, f"{who} complained ({word!r}):\n{out[-4000:]}"
    return out


def _subjects(files: list[Path]) -> list[str]:
    out = []
    for f in files:
        for line in f.read_bytes().splitlines():
            if line.startswith(b"Subject: "):
                out.append(line[9:].decode().strip())
    return sorted(out)


def test_offlineimap_one_sync(access_box: Box, tmp_path: Path) -> None:
    require("offlineimap")
    address = _fill(access_box, "offline")
    rc = tmp_path / "offlineimaprc"
    rc.write_text(
        f"[general]\naccounts = box\nmetadata = {tmp_path}/meta\nui = basic\n\n"
        "[Account box]\nlocalrepository = local\nremoterepository = remote\n\n"
        f"[Repository local]\ntype = Maildir\nlocalfolders = {tmp_path}/mail\n\n"
        # Implicit TLS on the imaps port, as docs/access.md tells offlineimap users: offlineimap 8's
        # STARTTLS path calls imaplib2's starttls() without the CA file (no certificate check at all)
        # and races with TLS 1.3 session tickets inside the client (about 1 run in 30 hangs 60 s).
        # "localhost": offlineimap checks DNS names only, and the dev certificate names localhost.
        f"[Repository remote]\ntype = IMAP\nremotehost = localhost\n"
        f"remoteport = {access_box.port('imaps')}\nremoteuser = {address}\nremotepass = {PASSWORD}\n"
        f"ssl = yes\nsslcacertfile = {access_box.cfg.tls.cert}\n"
        "folderfilter = lambda f: f == 'INBOX'\n")
    proc = subprocess.run(["offlineimap", "-c", str(rc), "-o", "-u", "basic"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HOME": str(tmp_path)})
    _no_complaint(proc, "offlineimap")
    inbox = tmp_path / "mail" / "INBOX"
    files = [*(inbox / "cur").iterdir(), *(inbox / "new").iterdir()]
    assert _subjects(files) == sorted(SUBJECTS)


def test_fetchmail_over_imap(access_box: Box, tmp_path: Path) -> None:
    require("fetchmail")
    address = _fill(access_box, "fmimap")
    out = tmp_path / "out"
    out.mkdir()
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        "set invisible\n"
        f'poll {access_box.host("imap")} proto IMAP port {access_box.port("imap")} '
        f'user "{address}" password "{PASSWORD}" sslproto "TLS1.2+" sslcertck '
        f'sslcommonname "{access_box.cfg.box.hostname}" sslcertfile "{access_box.cfg.tls.cert}" keep mda "/bin/sh -c \'cat > {out}/msg.$$\'"\n')
    rc.chmod(0o600)
    env = {**os.environ, "HOME": str(tmp_path), "FETCHMAILHOME": str(tmp_path)}
    proc = subprocess.run(["fetchmail", "-f", str(rc), "--nosyslog", "-v"], capture_output=True, text=True,
                          timeout=120, env=env)
    _no_complaint(proc, "fetchmail")
    assert _subjects(sorted(out.iterdir())) == sorted(SUBJECTS)


def test_getmail6_over_imap(access_box: Box, tmp_path: Path) -> None:
    require("getmail")
    address = _fill(access_box, "gmimap")
    out = tmp_path / "out"
    out.mkdir()
    rc = tmp_path / "getmailrc"
    rc.write_text(
        "[retriever]\ntype = SimpleIMAPSSLRetriever\n"
        f"server = {access_box.host('imaps')}\nport = {access_box.port('imaps')}\n"
        f"username = {address}\npassword = {PASSWORD}\nca_certs = {access_box.cfg.tls.cert}\nmailboxes = ('INBOX',)\n"
        # An external MDA, since getmail refuses Maildir delivery as root (PEERS.md).
        "[destination]\ntype = MDA_external\npath = /bin/sh\n"
        f'arguments = ("-c", "cat > {out}/msg.$$$$")\nallow_root_commands = true\nunixfrom = false\n'
        "[options]\nread_all = true\ndelete = false\ndelivered_to = false\nreceived = false\n"
        "message_log_syslog = false\n")
    proc = subprocess.run(["getmail", f"--rcfile={rc}", f"--getmaildir={tmp_path}"], capture_output=True,
                          text=True, timeout=120)
    _no_complaint(proc, "getmail")
    assert _subjects(sorted(out.iterdir())) == sorted(SUBJECTS)
