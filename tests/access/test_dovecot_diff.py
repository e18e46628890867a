"""Differential tests: the same IMAP command script against the access service and Dovecot.

Both servers get the same messages (by APPEND with explicit dates, so UIDs and
INTERNALDATEs agree) and the same commands; normalized responses must match
(tests/access/imapdiff.py says what is normalized and why).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.access.conftest import PASSWORD
from tests.access.dovecot import Dovecot, start_dovecot
from tests.access.imapdiff import RawIMAP, normalize
from tests.conftest import require
from tests.helpers.box import Box

DATE = b'"30-Nov-2026 12:00:00 +0000"'
USER = "carol@example.test"

M1 = (b"Date: Mon, 30 Nov 2026 11:00:00 +0100\r\nFrom: Alice Example <alice@example.test>\r\n"
      b"To: carol@example.test, \"Bob B.\" <bob@example.test>\r\nSubject: plain one\r\n"
      b"Message-ID: <m1@example.test>\r\n\r\nHello Carol,\r\nthis is plain text.\r\n.dot line\r\n")
M2 = (b"Date: Mon, 30 Nov 2026 11:05:00 +0000\r\nFrom: bob@example.test\r\nTo: carol@example.test\r\n"
      b"Subject: with attachment\r\nMIME-Version: 1.0\r\nMessage-ID: <m2@example.test>\r\n"
      b"Content-Type: multipart/mixed; boundary=\"XYZ\"\r\n\r\npreamble\r\n--XYZ\r\n"
      b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
      b"see the attachment\r\n--XYZ\r\nContent-Type: application/octet-stream; name=\"a.bin\"\r\n"
      b"Content-Disposition: attachment; filename=\"a.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
      b"AAECAwQFBgcICQ==\r\n--XYZ--\r\nepilogue\r\n")
M3 = (b"Date: Mon, 30 Nov 2026 11:10:00 -0500\r\nFrom: dave@example.test\r\nReply-To: list@example.test\r\n"
      b"To: carol@example.test\r\nCc: erin@example.test\r\nSubject: =?utf-8?q?caf=C3=A9_menu?=\r\n"
      b"In-Reply-To: <m1@example.test>\r\nMessage-ID: <m3@example.test>\r\n\r\nA longer body. " + b"x" * 400
      + b"\r\n")

SCRIPT: list[tuple[bytes, bytes | None]] = [
    (b"CREATE Diff", None),
    (b"APPEND Diff (\\Seen) " + DATE, M1),
    (b"APPEND Diff () " + DATE, M2),
    (b"APPEND Diff (\\Flagged $Label1) " + DATE, M3),
    (b"APPEND NoSuchBox " + DATE, M1),
    (b"SELECT NoSuchBox", None),
    (b'LIST "" "Diff*"', None),
    (b'LIST "" Trash', None),
    (b"STATUS Diff (MESSAGES UIDNEXT UNSEEN)", None),
    (b"SELECT Diff", None),
    (b"FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)", None),
    (b"FETCH 1:* (ENVELOPE)", None),
    (b"FETCH 1:* (BODYSTRUCTURE)", None),
    (b"FETCH 1:* (BODY)", None),
    (b"FETCH 2 (BODY.PEEK[1] BODY.PEEK[2] BODY.PEEK[2.MIME] BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])", None),
    (b"FETCH 3 (BODY.PEEK[TEXT]<0.20> BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT)])", None),
    (b"UID FETCH 1:* (BODY.PEEK[])", None),
    (b"FETCH 1 (BODY.PEEK[HEADER] RFC822.SIZE)", None),
    (b"SEARCH FLAGGED", None),
    (b"SEARCH SUBJECT menu", None),
    (b"SEARCH TEXT attachment", None),
    (b"SEARCH BODY plain", None),
    (b"SEARCH KEYWORD $Label1", None),
    (b"SEARCH LARGER 600", None),
    (b"SEARCH NOT SEEN", None),
    (b"SEARCH FROM alice", None),
    (b"SEARCH OR FLAGGED SEEN", None),
    (b"SEARCH 2:3", None),
    (b"UID SEARCH UID 2:*", None),
    (b"SEARCH SINCE 1-Jan-2020", None),
    (b"SEARCH BEFORE 1-Jan-2020", None),
    (b"SEARCH HEADER Message-ID m2", None),
    (b"SEARCH SENTBEFORE 1-Dec-2026", None),
    (b"STORE 1 +FLAGS (\\Flagged $Label2)", None),
    (b"STORE 1 -FLAGS (\\Seen)", None),
    (b"STORE 2 FLAGS.SILENT (\\Answered)", None),
    (b"FETCH 1:* (FLAGS)", None),
    (b"FETCH 2 (BODY[TEXT])", None),
    (b"FETCH 2 (FLAGS)", None),
    (b"COPY 1:2 Trash", None),
    (b"UID COPY 3 Trash", None),
    (b"STATUS Trash (MESSAGES UIDNEXT UNSEEN)", None),
    (b"UID MOVE 3 Trash", None),
    (b"STORE 1 +FLAGS.SILENT (\\Deleted)", None),
    (b"EXPUNGE", None),
    (b"FETCH 1:* (UID FLAGS)", None),
    (b"UID STORE 2 +FLAGS (\\Deleted)", None),
    (b"UID EXPUNGE 2", None),
    (b"SELECT Trash", None),
    (b"FETCH 1:* (UID FLAGS RFC822.SIZE)", None),
    (b"CREATE Diff.Sub", None),
    (b'LIST "" "Diff*"', None),
    (b'LIST "" "Diff.%"', None),
    (b"RENAME Diff.Sub Diff.Sub2", None),
    (b"SUBSCRIBE Diff.Sub2", None),
    (b'LSUB "" "Diff*"', None),
    (b"UNSUBSCRIBE Diff.Sub2", None),
    (b'LSUB "" "Diff*"', None),
    (b"DELETE Diff.Sub2", None),
    (b'LIST "" "Diff*"', None),
    (b"DELETE NoSuchBox", None),
    (b"CREATE Diff", None),
    (b"EXAMINE Diff", None),
    (b"STORE 1 +FLAGS (\\Seen)", None),
    (b"FETCH 1 (BODY[TEXT])", None),
    (b"FETCH 1 (FLAGS)", None),
    (b"CLOSE", None),
    (b"NOOP", None),
]


@pytest.fixture(scope="module")
def dovecot(access_box: Box) -> Iterator[Dovecot]:
    require("dovecot", "doveadm")
    dv = start_dovecot({USER: PASSWORD, POP_USER: PASSWORD}, access_box.cfg.tls.cert, access_box.cfg.tls.key)
    yield dv
    dv.stop()


def _run(host: str, port: int, box: Box) -> list[tuple[bytes, object]]:
    c = RawIMAP(host, port, box.client_tls())
    _, tagged = c.command(b'LOGIN "%s" "%s"' % (USER.encode(), PASSWORD.encode()))
    assert tagged.startswith(b"OK"), tagged
    out = []
    try:
        for cmd, lit in SCRIPT:
            untagged, tagged = c.command(cmd, lit)
            out.append((cmd, normalize(untagged, tagged)))
    finally:
        c.close()
    return out


def test_same_script_same_answers_as_dovecot(access_box: Box, dovecot: Dovecot) -> None:
    ours = _run(access_box.host("imap"), access_box.port("imap"), access_box)
    theirs = _run("127.0.0.1", dovecot.imap_port, access_box)
    diffs = [f"{cmd.decode()}\n  access:  {a!r}\n  dovecot: {b!r}" for (cmd, a), (_, b) in zip(ours, theirs, strict=True)
             if a != b]
    assert not diffs, "responses differ from Dovecot:\n" + "\n".join(diffs)


POP_SCRIPT = [b"STAT", b"LIST", b"LIST 2", b"RETR 1", b"RETR 2", b"RETR 3", b"TOP 2 0", b"TOP 3 1", b"DELE 1",
              b"STAT", b"LIST 1", b"RETR 1", b"RSET", b"STAT", b"RETR 9", b"TOP 1", b"NOOP", b"XYZZY"]


def _pop_run(port: int, box: Box) -> list[tuple[bytes, object]]:
    import poplib

    p = poplib.POP3("127.0.0.1", port, timeout=30)
    p.stls(context=box.client_tls())
    p.user(POP_USER)
    p.pass_(PASSWORD)
    out: list[tuple[bytes, object]] = []
    for cmd in POP_SCRIPT:
        verb = cmd.split()[0]
        p._putcmd(cmd.decode())
        first = p._getline()[0]
        ok = first.startswith(b"+OK")
        multiline = verb in (b"RETR", b"TOP", b"CAPA") or (verb in (b"LIST", b"UIDL") and len(cmd.split()) == 1)
        if ok and multiline:
            lines = []
            while (line := p._getline()[0]) != b".":
                lines.append(line)
            out.append((cmd, (True, lines)))
        else:
            # Single-line replies: the status; for STAT and LIST n also the numbers.
            value = first.split()[1:3] if ok and verb in (b"STAT", b"LIST") else None
            out.append((cmd, (ok, value)))
    p.quit()
    return out


POP_USER = "dave@example.test"


def test_same_pop3_script_same_answers_as_dovecot(access_box: Box, dovecot: Dovecot) -> None:
    access_box.add_user("dave", PASSWORD)
    for host, port in ((access_box.host("imap"), access_box.port("imap")), ("127.0.0.1", dovecot.imap_port)):
        c = RawIMAP(host, port, access_box.client_tls())
        assert c.command(b'LOGIN "%s" "%s"' % (POP_USER.encode(), PASSWORD.encode()))[1].startswith(b"OK")
        for msg in (M1, M2, M3):
            assert c.command(b"APPEND INBOX " + DATE, msg)[1].startswith(b"OK")
        c.close()
    ours = _pop_run(access_box.port("pop3"), access_box)
    theirs = _pop_run(dovecot.pop3_port, access_box)
    diffs = [f"{cmd.decode()}\n  access:  {a!r}\n  dovecot: {b!r}" for (cmd, a), (_, b) in zip(ours, theirs, strict=True)
             if a != b]
    assert not diffs, "POP3 responses differ from Dovecot:\n" + "\n".join(diffs)
