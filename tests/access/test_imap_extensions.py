"""IMAP extensions, each through its protocol (raw sockets; imaplib where it speaks the extension).

ENABLE, ID, LITERAL+ (RFC 7888), CONDSTORE/QRESYNC (RFC 7162) with VANISHED, ESEARCH
(RFC 4731), SEARCHRES (RFC 5182), LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819),
STATUS=SIZE (RFC 8438), BINARY (RFC 3516), MULTIAPPEND (RFC 3502), CATENATE (RFC 4469),
COMPRESS=DEFLATE (RFC 4978), QUOTA (RFC 9208), APPENDLIMIT (RFC 7889), IMAP4rev2 (RFC 9051).
"""

from __future__ import annotations

import base64
import re
import zlib

from tests.access.conftest import PASSWORD, message, raw_login, raw_ok
from tests.access.imapdiff import RawIMAP
from tests.helpers.box import Box

_login = raw_login
_ok = raw_ok


def _uid_of(tagged_or_untagged: bytes) -> int:
    return int(re.search(rb"APPENDUID \d+ (\d+)", tagged_or_untagged).group(1))


def test_enable_id_literal_plus(access_box: Box) -> None:
    c = RawIMAP(access_box.host("imap"), access_box.port("imap"), access_box.client_tls())
    # RFC 5161 §3.1: ENABLE is valid only once authenticated.
    assert c.command(b"ENABLE CONDSTORE")[1].startswith(b"BAD")
    untagged = _ok(c, b'ID ("name" "pytest" "version" "1")')
    assert untagged[0].startswith(b'* ID ("name" "ISP Mail Appliance"')
    # LITERAL+ (RFC 7888): a non-synchronizing literal needs no continuation; send all at once.
    user = f"alice@{access_box.domain}".encode()
    c.sock.sendall(b"l1 LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(user), user, len(PASSWORD), PASSWORD.encode()))
    reply = c.read_response()
    assert reply.startswith(b"l1 OK"), reply
    assert _ok(c, b"ENABLE CONDSTORE X-UNKNOWN") == [b"* ENABLED CONDSTORE"]
    assert _ok(c, b"ENABLE CONDSTORE") == [b"* ENABLED"]  # only what is newly enabled
    c.close()


def test_condstore_qresync_and_vanished(access_box: Box) -> None:
    c = _login(access_box)
    _ok(c, b"CREATE Resync")
    for i in range(4):
        _ok(c, b"APPEND Resync", message("a@x.test", "b@x.test", f"resync {i}"))
    assert _ok(c, b"ENABLE QRESYNC") == [b"* ENABLED CONDSTORE QRESYNC"]
    untagged = _ok(c, b"SELECT Resync")
    validity = int(re.search(rb"UIDVALIDITY (\d+)", b" ".join(untagged)).group(1))
    modseq = int(re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join(untagged)).group(1))
    # A conditional STORE: UID 1 changes, then the same condition fails (RFC 7162 §3.1.3 MODIFIED).
    untagged = _ok(c, b"UID STORE 1 (UNCHANGEDSINCE %d) +FLAGS (\\Flagged)" % modseq)
    assert re.search(rb"UID 1 .*MODSEQ \((\d+)\)", untagged[0]), untagged
    _, tagged = c.command(b"UID STORE 1 (UNCHANGEDSINCE %d) -FLAGS (\\Flagged)" % modseq)
    assert tagged.startswith(b"OK [MODIFIED 1]"), tagged
    _ok(c, b"UID STORE 3 +FLAGS.SILENT (\\Deleted)")
    untagged = _ok(c, b"EXPUNGE")
    assert untagged == [b"* VANISHED 3"]  # QRESYNC: VANISHED instead of EXPUNGE (RFC 7162 §3.2.10)
    untagged = _ok(c, b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % modseq)
    assert untagged[0] == b"* VANISHED (EARLIER) 3"
    assert any(b"UID 1 " in u and b"\\Flagged" in u and b"MODSEQ" in u for u in untagged[1:])
    _ok(c, b"UNSELECT")
    # Resynchronise in the SELECT itself (RFC 7162 §3.2.5).
    untagged = _ok(c, b"SELECT Resync (QRESYNC (%d %d 1:4))" % (validity, modseq))
    assert b"* VANISHED (EARLIER) 3" in untagged
    assert any(b"FETCH (UID 1 FLAGS (" in u and b"\\Flagged" in u for u in untagged)
    # The QRESYNC parameter without ENABLE QRESYNC is an error.
    d = _login(access_box)
    assert d.command(b"SELECT Resync (QRESYNC (%d %d))" % (validity, modseq))[1].startswith(b"BAD")
    d.close()
    c.close()


def test_esearch_and_searchres(access_box: Box) -> None:
    c = _login(access_box)
    _ok(c, b"CREATE Esearch")
    for i, flags in enumerate((b"(\\Seen)", b"()", b"(\\Seen)", b"()")):
        _ok(c, b"APPEND Esearch " + flags, message("a@x.test", "b@x.test", f"es {i}"))
    _ok(c, b"SELECT Esearch")
    untagged = _ok(c, b"SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN")
    assert untagged == [b'* ESEARCH (TAG "t%d") MIN 2 MAX 4 COUNT 2 ALL 2,4' % c.n], untagged
    assert _ok(c, b"UID SEARCH RETURN (COUNT) DELETED") == [b'* ESEARCH (TAG "t%d") UID COUNT 0' % c.n]
    # SEARCHRES: RETURN (SAVE) alone gives no ESEARCH; "$" is the saved set (RFC 5182 §2.1).
    assert _ok(c, b"SEARCH RETURN (SAVE) SEEN") == []
    untagged = _ok(c, b"FETCH $ (UID)")
    assert [re.search(rb"UID (\d+)", u).group(1) for u in untagged] == [b"1", b"3"]
    assert _ok(c, b"UID SEARCH UID $ NOT SEEN") == [b"* SEARCH"]
    c.close()


def test_list_extended_list_status_and_status_size(access_box: Box) -> None:
    c = _login(access_box, "bob")
    _ok(c, b"CREATE Lists.Work")
    _ok(c, b"SUBSCRIBE Lists.Work")
    sizes = []
    for i in range(3):
        raw = message("a@x.test", "b@x.test", f"ls {i}", body="x" * (100 * i) + "\r\n")
        sizes.append(len(raw))
        _ok(c, b"APPEND Lists.Work", raw)
    untagged = _ok(c, b'LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    by_name = {re.search(rb'"\." ("[^"]*")', u).group(1): u for u in untagged}
    assert b'"Lists"' in by_name and b'("CHILDINFO" ("SUBSCRIBED"))' in by_name[b'"Lists"']  # RFC 5258 §3.5
    untagged = _ok(c, b'LIST "" "Lists.*" RETURN (SUBSCRIBED STATUS (MESSAGES SIZE UIDNEXT))')
    assert untagged[0].startswith(b"* LIST (") and b"\\Subscribed" in untagged[0]
    assert untagged[1] == b'* STATUS "Lists.Work" (MESSAGES 3 SIZE %d UIDNEXT 4)' % sum(sizes)
    assert _ok(c, b'LIST (SPECIAL-USE) "" "*"') and all(
        re.search(rb"\\(Sent|Drafts|Trash|Junk)", u) for u in _ok(c, b'LIST (SPECIAL-USE) "" "*"'))
    untagged = _ok(c, b"STATUS Lists.Work (SIZE MESSAGES HIGHESTMODSEQ APPENDLIMIT)")
    assert re.fullmatch(rb'\* STATUS "Lists.Work" \(SIZE %d MESSAGES 3 HIGHESTMODSEQ \d+ APPENDLIMIT \d+\)'
                        % sum(sizes), untagged[0]), untagged
    c.close()


def test_binary_fetch_decodes_the_transfer_encoding(access_box: Box) -> None:
    payload = bytes(range(256))
    raw = (b"From: a@x.test\r\nTo: b@x.test\r\nSubject: bin\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
           b"--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(payload).replace(b"\n", b"\r\n") + b"--B--\r\n")
    c = _login(access_box)
    _ok(c, b"CREATE Binary")
    _ok(c, b"APPEND Binary", raw)
    _ok(c, b"SELECT Binary")
    untagged = _ok(c, b"FETCH 1 (BINARY.SIZE[2] BINARY.PEEK[2])")
    assert b"BINARY.SIZE[2] 256" in untagged[0]
    # RFC 3516 §4.2: decoded content with NUL goes as literal8 ~{n}.
    assert b"BINARY[2] ~{256}\r\n" + payload in untagged[0]
    flags = _ok(c, b"FETCH 1 (FLAGS)")[0]
    assert b"\\Seen" not in flags  # BINARY.PEEK does not set \Seen
    c.close()


def test_multiappend_and_catenate(access_box: Box) -> None:
    c = _login(access_box, "carol")
    _ok(c, b"CREATE Multi")
    one, two = message("a@x.test", "b@x.test", "multi one"), message("a@x.test", "b@x.test", "multi two")
    # MULTIAPPEND (RFC 3502) with non-synchronizing literals: one command, one APPENDUID range.
    c.sock.sendall(b"m1 APPEND Multi (\\Seen) {%d+}\r\n%s (\\Flagged) {%d+}\r\n%s\r\n" % (len(one), one, len(two), two))
    reply = c.read_response()
    m = re.match(rb"m1 OK \[APPENDUID (\d+) (\d+):(\d+)\]", reply)
    assert m and int(m.group(3)) == int(m.group(2)) + 1, reply
    validity = int(m.group(1))
    # CATENATE (RFC 4469): new text around a part of an existing message, by IMAP URL.
    url = b"/Multi;UIDVALIDITY=%d/;UID=%s/;SECTION=TEXT" % (validity, m.group(2))
    head = b"From: c@x.test\r\nSubject: catenated\r\n\r\n"
    c.sock.sendall(b"c1 APPEND Multi CATENATE (TEXT {%d+}\r\n%s URL \"%s\" TEXT {5+}\r\nBye\r\n)\r\n"
                   % (len(head), head, url))
    reply = c.read_response()
    assert reply.startswith(b"c1 OK [APPENDUID"), reply
    uid = _uid_of(reply)
    _ok(c, b"SELECT Multi")
    body = _ok(c, b"UID FETCH %d (BODY.PEEK[])" % uid)[0]
    assert head + b"Hello.\r\n" + b"Bye\r\n" in body
    _, tagged = c.command(b'APPEND Multi CATENATE (URL "/Multi/;UID=999")')
    assert tagged.startswith(b"NO [BADURL"), tagged
    c.close()


class _Deflated:
    """The client side of COMPRESS=DEFLATE (RFC 4978): raw deflate both ways over RAWIMAP's socket."""

    def __init__(self, c: RawIMAP) -> None:
        self.c = c
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inp = zlib.decompressobj(-15)
        self.buf = c.buf  # nothing is pipelined after the OK

    def command(self, tag: bytes, cmd: bytes) -> list[bytes]:
        self.c.sock.sendall(self.out.compress(tag + b" " + cmd + b"\r\n") + self.out.flush(zlib.Z_SYNC_FLUSH))
        lines: list[bytes] = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.c.sock.recv(65536)
                assert chunk, "server closed the connection"
                self.buf += self.inp.decompress(chunk)
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines


def test_compress_deflate(access_box: Box) -> None:
    c = _login(access_box)
    _, tagged = c.command(b"COMPRESS DEFLATE")
    assert tagged.startswith(b"OK")
    z = _Deflated(c)
    lines = z.command(b"z1", b"CAPABILITY")
    assert lines[-1].startswith(b"z1 OK") and b"IMAP4rev1" in lines[0]
    assert b"COMPRESS=DEFLATE" not in lines[0]  # RFC 4978 §3: not offered again once active
    assert z.command(b"z2", b"COMPRESS DEFLATE")[-1].startswith(b"z2 NO [COMPRESSIONACTIVE]")
    lines = z.command(b"z3", b'LIST "" "INBOX"')
    assert lines[0].startswith(b"* LIST") and lines[-1].startswith(b"z3 OK")


def test_appendlimit_refuses_before_the_data_is_sent(access_box: Box) -> None:
    from tests.access.conftest import MAX_MESSAGE_SIZE

    c = _login(access_box)
    caps = _ok(c, b"CAPABILITY")[0]
    assert b"APPENDLIMIT=%d" % MAX_MESSAGE_SIZE in caps  # RFC 7889: the relay's size limit
    # A 2 GB synchronizing literal: refused at once, no "+" (the client never sends the data).
    c.sock.sendall(b"a1 APPEND Drafts {2000000000}\r\n")
    reply = c.read_response()
    assert reply.startswith(b"a1 NO [TOOBIG]"), reply
    # A non-synchronizing one over the limit is read, thrown away, then refused; the session goes on.
    big = MAX_MESSAGE_SIZE + 1000
    c.sock.sendall(b"a2 APPEND Drafts {%d+}\r\n" % big + b"x" * big + b"\r\n")
    reply = c.read_response()
    assert reply.startswith(b"a2 NO [TOOBIG]"), reply
    assert _ok(c, b"STATUS Drafts (MESSAGES)") == [b'* STATUS "Drafts" (MESSAGES 0)']
    # Literals of other commands are small: a 1 MB LOGIN-sized literal is refused too.
    _, tagged = c.command(b"SELECT {1000000}")
    assert tagged.startswith((b"BAD", b"NO")), tagged
    c.close()


def test_quota_getquotaroot_and_overquota(access_box: Box) -> None:
    address = f"carol@{access_box.domain}"
    access_box.cli("user", "quota", address, "--storage", "1M", "--messages", "1000")
    try:
        c = _login(access_box, "carol")
        untagged = _ok(c, b"GETQUOTAROOT INBOX")
        assert untagged[0] == b'* QUOTAROOT "INBOX" ""'
        m = re.fullmatch(rb'\* QUOTA "" \(STORAGE (\d+) 1024 MESSAGE (\d+) 1000\)', untagged[1])
        assert m, untagged
        assert _ok(c, b'GETQUOTA ""')[0] == untagged[1]
        c.close()
        access_box.cli("user", "quota", address, "--storage", str(int(m.group(1)) * 1024 + 100))
        c = _login(access_box, "carol")
        _, tagged = c.command(b"APPEND INBOX", message("a@x.test", "b@x.test", "over", body="y" * 5000 + "\r\n"))
        assert tagged.startswith(b"NO [OVERQUOTA]"), tagged
        c.close()
    finally:
        access_box.cli("user", "quota", address, "--storage", "0", "--messages", "0")


def test_imap4rev2_enable(access_box: Box) -> None:
    c = _login(access_box, "bob")
    assert _ok(c, b"ENABLE IMAP4rev2") == [b"* ENABLED IMAP4rev2"]
    _ok(c, "CREATE \"Café\"".encode())  # RFC 9051 §5.1: UTF-8 names once IMAP4rev2 is enabled
    untagged = _ok(c, "SELECT \"Café\"".encode())
    assert not any(u.endswith(b"RECENT") for u in untagged)  # no RECENT response in IMAP4rev2
    assert any(u.startswith(b"* LIST (") and "Café".encode() in u for u in untagged)
    _ok(c, "APPEND \"Café\"".encode(), message("a@x.test", "b@x.test", "rev2"))
    _ok(c, b"NOOP")
    # RFC 9051 §6.4.4: SEARCH answers with ESEARCH in IMAP4rev2.
    assert _ok(c, b"SEARCH ALL") == [b'* ESEARCH (TAG "t%d") ALL 1' % c.n]
    c.close()
    old = _login(access_box, "bob")
    assert any(b'"Caf&AOk-"' in u for u in _ok(old, b'LIST "" "Caf*"'))  # modified UTF-7 for IMAP4rev1
    old.close()


def test_sort_and_thread(access_box: Box) -> None:
    c = _login(access_box, "bob")
    _ok(c, b"CREATE Threads")
    msgs = [
        (b"<t1@x>", b"", b"Mon, 30 Nov 2026 10:00:00 +0000", b"Plans", b"zed@x.test", 300),
        (b"<t2@x>", b"<t1@x>", b"Mon, 30 Nov 2026 11:00:00 +0000", b"Re: Plans", b"amy@x.test", 100),
        (b"<t3@x>", b"", b"Mon, 30 Nov 2026 09:00:00 +0000", b"Lunch", b"bea@x.test", 200),
        (b"<t4@x>", b"<t2@x>", b"Mon, 30 Nov 2026 12:00:00 +0000", b"Re: Re: Plans", b"cat@x.test", 50),
    ]
    for mid, ref, date, subject, sender, size in msgs:
        raw = (b"From: " + sender + b"\r\nTo: bob@x.test\r\nSubject: " + subject + b"\r\nDate: " + date
               + b"\r\nMessage-ID: " + mid + b"\r\n" + (b"In-Reply-To: " + ref + b"\r\nReferences: " + ref + b"\r\n"
                                                       if ref else b"") + b"\r\n" + b"x" * size + b"\r\n")
        _ok(c, b"APPEND Threads", raw)
    _ok(c, b"SELECT Threads")
    assert _ok(c, b"SORT (DATE) UTF-8 ALL") == [b"* SORT 3 1 2 4"]  # RFC 5256 §3: by the Date: field
    assert _ok(c, b"SORT (REVERSE SIZE) UTF-8 ALL") == [b"* SORT 1 3 2 4"]
    assert _ok(c, b"SORT (FROM) US-ASCII ALL") == [b"* SORT 2 3 4 1"]
    assert _ok(c, b"UID SORT (SUBJECT DATE) UTF-8 ALL") == [b"* SORT 3 1 2 4"]  # base subjects "lunch", "plans"
    assert _ok(c, b"THREAD REFERENCES UTF-8 ALL") == [b"* THREAD (3)(1 2 4)"]
    assert _ok(c, b"THREAD ORDEREDSUBJECT UTF-8 ALL") == [b"* THREAD (3)(1 (2)(4))"]  # RFC 5256 §4
    assert _ok(c, b"THREAD REFERENCES UTF-8 NOT FROM zed") == [b"* THREAD (3)(2 4)"]
    _, tagged = c.command(b"SORT (DATE) KOI8-R ALL")
    assert tagged.startswith(b"NO [BADCHARSET"), tagged
    c.close()
