"""POP3 differential: the same command scripts against the box and a private Dovecot 2.3, then the caps.

Both servers get the same Maildir files, one at a time (each followed by a POP3
session that picks it up, so both number them in the same order). Responses are
compared after normalising what legitimately differs (``_norm``):

- the human-readable text after +OK/-ERR (response codes in brackets are kept);
- the UIDVALIDITY half of a UIDL unique-id (both use ``%08x`` UID + ``%08x`` UIDVALIDITY,
  Dovecot's ``pop3_uidl_format = %08Xu%08Xv``; the UID half must match);
- IMPLEMENTATION in CAPA, and before TLS the USER and SASL lines: Dovecot lists them
  and refuses at PASS, the box does not offer plaintext logins at all (RFC 2595 §6).
  For the same reason USER before TLS is not in the scripts.

Not compared, because Dovecot's defaults differ on purpose: a second POP3 session of
a user (Dovecot's ``pop3_lock_session = no``; the box locks the maildrop, RFC 1939 §8).
That and the connection caps are tested against the box alone at the end.
"""

from __future__ import annotations

import base64
import imaplib
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.mailstore import maildir_path
from tests.access.conftest import PASSWORD, imap
from tests.access.dovecot import Dovecot, start_dovecot
from tests.conftest import require
from tests.helpers.box import Box
from tests.helpers.wait import wait_logged

USER = "pdiff@example.test"
PLAIN = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())

MESSAGES = [
    # LF line ends (as the relay writes them), dot lines, no final line end.
    b"From: a@example.test\nTo: pdiff@example.test\nSubject: one\n\nbody\n.dot\n..two\n.\nend",
    # CRLF already, a longer body for TOP.
    b"From: b@example.test\r\nSubject: two\r\n\r\n" + b"".join(b"line %d\r\n" % i for i in range(1, 8)),
    # Header only, no blank line.
    b"From: c@example.test\nSubject: three\n",
    # An empty body, then a body that is a single dot.
    b"From: d@example.test\nSubject: four\n\n",
    b"From: e@example.test\nSubject: five\n\n.\n",
    # 300 KB, with a 70 KB line (longer than one read chunk) and CR/LF pairs at chunk edges.
    b"From: f@example.test\nSubject: six\n\n" + b"x" * 70_000 + b"\n" + b".y\r\n" * 60_000,
]
N = len(MESSAGES)

# (command, multi-line when +OK). None as command: read one more reply without sending.
# Before login both close the connection at the 3rd unknown command in a row (test_unknown_commands...),
# so the scripts put a good command after every second bad one.
PRE_TLS = ["CAPA", "STAT", "LIST", "CAPA", "XYZZY", "NOOP"]
PRE_LOGIN = ["CAPA", "AUTH", "STLS", "LIST", "RETR 1", "CAPA", "XYZZY", "PASS x", "CAPA", f"USER {USER}",
             "PASS wrong", f"USER {USER}", f"PASS {PASSWORD}", "CAPA"]
MAIN = ["STAT", "LIST", "LIST 2", "LIST 0", f"LIST {N + 1}", "LIST x", "LIST 1 2", "UIDL", "UIDL 3",
        f"UIDL {N + 1}", "TOP 1 0", "TOP 2 3", "TOP 2 100", "TOP 3 0", "TOP 4 1", "TOP 5 1", "TOP 6 2", "TOP 1",
        "TOP 1 x", "TOP 1 -1", f"TOP {N + 1} 0", *[f"RETR {i}" for i in range(1, N + 1)], f"RETR {N + 1}",
        "RETR", "RETR 0", "DELE 1", "DELE 1", "RETR 1", "LIST 1", "UIDL 1", "TOP 1 0", "STAT", "LIST", "UIDL",
        "RSET", "STAT", "LIST", "NOOP", "XYZZY", f"USER {USER}", "PASS x", "AUTH PLAIN", "STLS", "CAPA", "QUIT"]
AUTH_SCRIPTS = [
    [f"AUTH PLAIN {PLAIN.decode()}", "STAT", "QUIT"],
    ["AUTH PLAIN", PLAIN.decode(), "STAT", "QUIT"],
    ["auth plain", "*", "AUTH PLAIN !!notbase64", "AUTH X-UNKNOWN", "AUTH PLAIN =", "AUTH PLAIN", "*",
     f"USER {USER}", f"PASS {PASSWORD}", "STAT", "QUIT"],
]
PIPELINED = ["STAT", "LIST", "UIDL", "TOP 2 1", "RETR 1", "DELE 3", "LIST 3", "STAT", "RSET", "LIST 3", "NOOP",
             "QUIT"]
AFTER_QUIT = ["DELE 2", "QUIT"]
RECONNECT = ["STAT", "LIST", "UIDL", "RETR 2", "QUIT"]


class RawPOP:
    """A POP3 client that shows every octet of every reply (poplib hides codes and stuffing)."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, stls: bool = True) -> None:
        self.sock: socket.socket = socket.create_connection((host, port), timeout=30)
        self.buf = b""
        self.ctx = ctx
        self.greeting = self.readline()
        self.last_cmd = b""
        if stls:
            self.stls()

    def stls(self) -> bytes:
        self.send(b"STLS")
        reply = self.readline()
        assert reply.startswith(b"+OK"), reply
        self.sock = self.ctx.wrap_socket(self.sock)
        self.buf = b""
        return reply

    def send(self, line: bytes) -> None:
        self.sock.sendall(line + b"\r\n")

    def readline(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"connection closed; buffered {self.buf[:200]!r}")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self, cmd: str) -> tuple[bytes, list[bytes] | None]:
        """The status line of CMD's reply and, for a multi-line reply, its lines (still byte-stuffed)."""
        status = self.readline()
        words = cmd.upper().split()
        multi = bool(words) and (words[0] in ("CAPA", "RETR", "TOP") or (words[0] in ("LIST", "UIDL") and len(words) == 1)
                                 or words == ["AUTH"])
        if not (multi and status.startswith(b"+OK")):
            return status, None
        body = []
        while (line := self.readline()) != b".":
            body.append(line)
        return status, body

    def run(self, script: list[str]) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        for cmd in script:
            self.send(cmd.encode())
            out.append((cmd, _norm(cmd, *self.reply(cmd))))
        return out

    def close(self) -> None:
        self.sock.close()


def _uid(unique_id: bytes) -> object:
    text = unique_id.decode()
    if len(text) == 16 and all(c in "0123456789abcdefABCDEF" for c in text):
        return ("uid", int(text[:8], 16))
    return ("not UID+UIDVALIDITY", text)


def _norm(cmd: str, status: bytes, body: list[bytes] | None, tls: bool = True) -> object:
    words = cmd.upper().split()
    verb = words[0] if words else ""
    if status.startswith(b"+ ") or status == b"+":
        return ("continue",)
    ok = status.startswith(b"+OK")
    rest = status[3 if ok else 4:].strip()
    code = rest[1:rest.index(b"]")].decode() if rest.startswith(b"[") and b"]" in rest else None
    head: tuple[object, ...] = (ok, code)
    if ok and verb == "STAT":
        head += tuple(rest.split()[:2])
    elif ok and verb == "LIST" and len(words) == 2:
        head += tuple(rest.split()[:2])
    elif ok and verb == "UIDL" and len(words) == 2:
        n, uid = rest.split()[:2]
        head += (n, _uid(uid))
    if body is None:
        return head
    if verb == "CAPA":
        skip = ("IMPLEMENTATION",) if tls else ("IMPLEMENTATION", "USER", "SASL")
        return (*head, sorted(c for c in body if not c.decode().startswith(skip)))
    if verb == "UIDL":
        return (*head, [(ln.split()[0], _uid(ln.split()[1])) for ln in body])
    return (*head, body)


def _deliver(path: Path, name: str, data: bytes, owner: int | None = None) -> None:
    for sub in ("new", "cur", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
        if owner is not None:
            os.chown(path / sub, owner, owner)
    tmp = path / "tmp" / name
    tmp.write_bytes(data)
    if owner is not None:
        os.chown(tmp, owner, owner)
    tmp.rename(path / "new" / name)


@pytest.fixture(scope="module")
def servers(access_box: Box) -> Iterator[tuple[tuple[str, int], tuple[str, int], ssl.SSLContext]]:
    require("dovecot", "doveadm")
    access_box.add_user(USER.split("@")[0], PASSWORD)
    dv: Dovecot = start_dovecot({USER: PASSWORD}, access_box.cfg.tls.cert, access_box.cfg.tls.key)
    ctx = access_box.client_tls()
    ours = (access_box.host("pop3"), access_box.port("pop3"))
    theirs = ("127.0.0.1", dv.pop3_port)
    try:
        for i, data in enumerate(MESSAGES):
            name = f"1764590000.M{i:06d}P1.diff"
            _deliver(maildir_path(access_box.cfg.paths.mail_dir, USER), name, data)
            _deliver(dv.maildir(USER), name, data, owner=65534)
            for host, port in (ours, theirs):  # one session each, so both number the message now
                c = RawPOP(host, port, ctx)
                assert c.run([f"USER {USER}", f"PASS {PASSWORD}", "STAT", "QUIT"])[2][1][2] == str(i + 1).encode()
                c.close()
        yield ours, theirs, ctx
    finally:
        dv.stop()


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) < 400 else text[:200] + f" ...({len(text)} chars)... " + text[-150:]


def _compare(ours: list[tuple[str, object]], theirs: list[tuple[str, object]]) -> None:
    diffs = [f"{cmd}\n  box:     {_short(a)}\n  dovecot: {_short(b)}"
             for (cmd, a), (_, b) in zip(ours, theirs, strict=True) if a != b]
    assert not diffs, "POP3 replies differ from Dovecot:\n" + "\n".join(diffs)


def _both(servers, script: list[str], login: bool = True) -> None:  # type: ignore[no-untyped-def]
    ours, theirs, ctx = servers
    results = []
    for host, port in (ours, theirs):
        c = RawPOP(host, port, ctx)
        if login:
            assert c.run([f"USER {USER}", f"PASS {PASSWORD}"])[1][1][0] is True
        results.append(c.run(script))
        c.close()
    _compare(*results)


def test_before_tls(servers) -> None:  # type: ignore[no-untyped-def]
    ours, theirs, ctx = servers
    results = []
    for host, port in (ours, theirs):
        c = RawPOP(host, port, ctx, stls=False)
        assert c.greeting.startswith(b"+OK")
        out = []
        for cmd in PRE_TLS:
            c.send(cmd.encode())
            out.append((cmd, _norm(cmd, *c.reply(cmd), tls=False)))
        out.append(("STLS", _norm("STLS", c.stls(), None)))
        out += c.run(["CAPA", "STLS"])  # after TLS: STLS is gone from CAPA and refused
        results.append(out)
        c.close()
    _compare(*results)


def test_authorization_state(servers) -> None:  # type: ignore[no-untyped-def]
    _both(servers, PRE_LOGIN, login=False)


def test_unknown_commands_in_a_row_before_login_close_the_connection(servers) -> None:  # type: ignore[no-untyped-def]
    ours, theirs, ctx = servers
    results = []
    for host, port in (ours, theirs):
        c = RawPOP(host, port, ctx)
        out: list[object] = c.run(["XYZZY", "STAT", "GET / HTTP/1.0"])
        out.append(_norm("", c.readline(), None))  # the "too many" line
        with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
            c.run(["NOOP"])
        results.append(out)
        c.close()
    assert results[0] == results[1], results


def test_transaction_state(servers) -> None:  # type: ignore[no-untyped-def]
    _both(servers, MAIN)


@pytest.mark.parametrize("script", AUTH_SCRIPTS, ids=["initial-response", "continuation", "cancel-and-errors"])
def test_auth_plain(servers, script: list[str]) -> None:  # type: ignore[no-untyped-def]
    _both(servers, script, login=False)


def test_pipelined_batch_in_one_packet(servers) -> None:  # type: ignore[no-untyped-def]
    ours, theirs, ctx = servers
    results = []
    for host, port in (ours, theirs):
        c = RawPOP(host, port, ctx)
        c.sock.sendall(b"".join(f"{cmd}\r\n".encode() for cmd in [f"USER {USER}", f"PASS {PASSWORD}", *PIPELINED]))
        out = [(cmd, _norm(cmd, *c.reply(cmd))) for cmd in [f"USER {USER}", f"PASS {PASSWORD}", *PIPELINED]]
        results.append(out)
        c.close()
    _compare(*results)


def test_dele_quit_then_reconnect(servers) -> None:  # type: ignore[no-untyped-def]
    ours, theirs, ctx = servers
    before = {}
    for name, (host, port) in (("box", ours), ("dovecot", theirs)):
        c = RawPOP(host, port, ctx)
        c.run([f"USER {USER}", f"PASS {PASSWORD}"])
        c.send(b"UIDL")
        before[name] = c.reply("UIDL")[1]
        c.close()
    _both(servers, AFTER_QUIT)
    _both(servers, RECONNECT)
    # The unique ids of the messages that stayed are the ones they had (RFC 1939 §7 UIDL).
    c = RawPOP(*ours, ctx)
    c.run([f"USER {USER}", f"PASS {PASSWORD}"])
    c.send(b"UIDL")
    after = [ln.split()[1] for ln in c.reply("UIDL")[1] or []]
    c.close()
    assert after == [ln.split()[1] for i, ln in enumerate(before["box"] or []) if i != 1]


# --- the box alone: the maildrop lock and the connection caps ----------------------------------


def _pop_login(box: Box, user: str = "alice") -> tuple[RawPOP, bytes]:
    c = RawPOP(box.host("pop3"), box.port("pop3"), box.client_tls())
    c.run([f"USER {user}@{box.domain}"])
    c.send(f"PASS {PASSWORD}".encode())
    return c, c.readline()


def test_second_pop3_session_of_a_user_gets_in_use_until_the_first_quits(access_box: Box) -> None:
    first, status = _pop_login(access_box)
    assert status.startswith(b"+OK")
    second, status = _pop_login(access_box)
    assert status.startswith(b"-ERR [IN-USE]") and b"locked" in status
    assert second.run(["STAT"])[0][1][0] is False  # still not logged in: RFC 1939 AUTHORIZATION
    first.run(["QUIT"])
    first.close()
    assert second.run([f"USER alice@{access_box.domain}", f"PASS {PASSWORD}"])[1][1][0] is True
    second.run(["QUIT"])
    second.close()


def test_eleventh_session_of_a_user_from_one_address_is_refused_until_one_ends(access_box: Box) -> None:
    # The default class allows 10 logged-in IMAP and POP3 sessions of one account per address, together.
    sessions: list[imaplib.IMAP4] = [imap(access_box, "bob") for _ in range(9)]
    pop, status = _pop_login(access_box, "bob")
    try:
        assert status.startswith(b"+OK")  # the 10th
        extra = RawPOP(access_box.host("pop3"), access_box.port("pop3"), access_box.client_tls())
        extra.run([f"USER bob@{access_box.domain}"])
        extra.send(f"PASS {PASSWORD}".encode())
        refused = extra.readline()
        assert refused.startswith(b"-ERR [IN-USE]") and b"user+IP" in refused
        extra.close()
        with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE|connections"):
            imap(access_box, "bob")
        wait_logged(Path(access_box.cfg.paths.log_dir) / "access.log",
                    "limited entry=pop3 limit=connections key=access/ip:127.0.0.1/acct:bob@example.test",
                    "limited entry=imap limit=connections key=access/ip:127.0.0.1/acct:bob@example.test")
        sessions.pop().logout()  # a released lease frees the slot
        sessions.append(imap(access_box, "bob"))
        assert sessions[-1].noop()[0] == "OK"
    finally:
        for m in sessions:
            m.logout()
        pop.run(["QUIT"])
        pop.close()
    again, status = _pop_login(access_box, "bob")
    assert status.startswith(b"+OK")
    again.run(["QUIT"])
    again.close()


def test_connections_not_logged_in_are_capped_per_address(access_box: Box) -> None:
    cap = access_box.cfg.limits.access_connections_per_ip
    held = []
    try:
        for _ in range(cap):
            c = RawPOP(access_box.host("pop3"), access_box.port("pop3"), access_box.client_tls(), stls=False)
            assert c.greeting.startswith(b"+OK")
            held.append(c)
        refused = RawPOP(access_box.host("pop3"), access_box.port("pop3"), access_box.client_tls(), stls=False)
        assert refused.greeting.startswith(b"-ERR [SYS/TEMP]") and b"Too many connections" in refused.greeting
        wait_logged(Path(access_box.cfg.paths.log_dir) / "access.log",
                    "limited entry=pop3 limit=connections key=ip:127.0.0.1")
        with pytest.raises(ConnectionError):
            refused.readline()  # and the server hung up
        refused.close()
        held.pop().run(["QUIT"])
        again = RawPOP(access_box.host("pop3"), access_box.port("pop3"), access_box.client_tls(), stls=False)
        assert again.greeting.startswith(b"+OK")
        held.append(again)
    finally:
        for c in held:
            c.close()
