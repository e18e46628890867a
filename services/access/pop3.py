"""POP3 (RFC 1939) with CAPA (RFC 2449), STLS (RFC 2595) and XTND XMIT, over the INBOX Maildir.

Twisted's POP3 has no STLS, so this is a small server of its own on
LineReceiver. USER/PASS are refused until TLS is active; XTND XMIT (qpopper,
Eudora) sends a message through the relay's internal socket.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import interfaces
from twisted.protocols import basic, policies
from twisted.python import log

from appliance.accounts import Account
from appliance.mailstore import Folder, MailstoreError
from appliance.submitclient import Reply
from services.access.backend import Backend, LoginRefused, LoginUnavailable
from services.access.imap import quick_ack, set_nodelay, tcp_socket


class POP3Server(basic.LineReceiver, policies.TimeoutMixin):
    delimiter = b"\r\n"
    MAX_LENGTH = 65536
    timeOut = 600  # RFC 1939 3: at least 10 minutes

    def __init__(self, backend: Backend, tls_context: Any, implicit_tls: bool) -> None:
        self.backend = backend
        self.ctx = tls_context
        self.tls = implicit_tls
        self.state = "authorization"
        self.user_name: str | None = None
        self.account: Account | None = None
        self.folder: Folder | None = None
        self.uids: list[int] = []
        self.sizes: list[int] = []
        self.deleted: set[int] = set()
        self.waiting: list[bytes] | None = None  # lines held while a login or send is judged
        self.xmit: list[bytes] | None = None
        self.xmit_size = 0

    # --- plumbing ---------------------------------------------------------------

    def connectionMade(self) -> None:
        self._sock = tcp_socket(self.transport)
        set_nodelay(self._sock)
        self.setTimeout(self.timeOut)
        self.ok(b"POP3 ready")

    def connectionLost(self, reason: Any) -> None:
        self.setTimeout(None)

    def ok(self, text: bytes = b"") -> None:
        self.sendLine(b"+OK " + text if text else b"+OK")

    def err(self, text: bytes) -> None:
        self.sendLine(b"-ERR " + text)

    @property
    def client_ip(self) -> str:
        return str(getattr(self.transport.getPeer(), "host", "unknown"))

    def lineLengthExceeded(self, line: bytes) -> None:
        self.err(b"Line too long")
        self.transport.loseConnection()

    def _hold(self) -> None:
        self.waiting = []
        self.pauseProducing()

    def _release(self, _: Any = None) -> None:
        lines, self.waiting = self.waiting or [], None
        self.resumeProducing()
        for line in lines:
            if self.waiting is not None:
                self.waiting.append(line)
            else:
                self.lineReceived(line)

    def dataReceived(self, data: bytes) -> None:
        quick_ack(self._sock)  # see services/access/imap.py quick_ack
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        self.resetTimeout()
        if self.waiting is not None:
            self.waiting.append(line)
            return
        if self.xmit is not None:
            self._xmit_line(line)
            return
        cmd, _, arg = line.partition(b" ")
        handler = getattr(self, f"do_{cmd.decode('ascii', 'replace').upper()}", None)
        if handler is None:
            self.err(b"Unknown command")
            return
        try:
            handler(arg)
        except Exception:
            log.err()
            self.err(b"[SYS/TEMP] Internal error")

    # --- authorization state ------------------------------------------------------

    def do_CAPA(self, arg: bytes) -> None:
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE"]
        if self.state == "authorization":
            caps.append(b"USER" if self.tls else b"STLS")
        self.ok(b"Capability list follows")
        for c in caps:
            self.sendLine(c)
        self.sendLine(b".")

    def do_STLS(self, arg: bytes) -> None:
        if self.tls:
            self.err(b"TLS is already active")
            return
        if self.state != "authorization" or interfaces.ITLSTransport(self.transport, None) is None:
            self.err(b"STLS not available")
            return
        self.ok(b"Begin TLS negotiation")
        # RFC 2595 4: anything pipelined behind STLS arrived in plaintext; drop it.
        self._buffer = b""
        self.transport.startTLS(self.ctx)
        self.tls = True

    def _need_tls(self) -> bool:
        if not self.tls:
            self.err(b"[AUTH] Plaintext authentication disallowed on non-secure connections; use STLS")
            return False
        return True

    def do_USER(self, arg: bytes) -> None:
        if self.state != "authorization":
            self.err(b"Already logged in")
            return
        if not self._need_tls():
            return
        self.user_name = arg.decode("utf-8", "replace").strip()
        self.ok(b"Send the password")

    def do_PASS(self, arg: bytes) -> None:
        if self.state != "authorization":
            self.err(b"Already logged in")
            return
        if not self._need_tls():
            return
        if not self.user_name:
            self.err(b"USER first")
            return
        user, self.user_name = self.user_name, None
        self._hold()
        d = self.backend.login(user, arg.decode("utf-8", "replace"), self.client_ip)
        d.addCallbacks(self._logged_in, self._login_failed)
        d.addBoth(self._release)

    def _logged_in(self, account: Account) -> None:
        store = self.backend.mailstore(account.address)
        folder = store.folder("INBOX")
        if folder is None:
            self.err(b"[SYS/TEMP] Mailbox unavailable")
            return
        folder.sync()
        self.account, self.folder = account, folder
        self.uids = folder.uids()
        self.sizes = [folder.entries[u].size for u in self.uids]
        self.state = "transaction"
        self.ok(b"Logged in, %d messages" % len(self.uids))

    def _login_failed(self, f: Any) -> None:
        if f.check(LoginRefused):
            self.err(b"[AUTH] Authentication failed")
        elif f.check(LoginUnavailable):
            self.err(b"[SYS/TEMP] " + f.value.reply.text.encode())
        else:
            log.err(f)
            self.err(b"[SYS/TEMP] Temporary authentication failure")

    def do_QUIT(self, arg: bytes) -> None:
        if self.state == "transaction" and self.folder is not None:
            # RFC 1939 6: the UPDATE state removes what was marked deleted.
            self.folder.expunge([self.uids[i] for i in sorted(self.deleted)])
        self.ok(b"Logging out")
        self.transport.loseConnection()

    # --- transaction state ------------------------------------------------------------

    def _msg(self, arg: bytes) -> int | None:
        """0-based index for message number ARG, or None after answering -ERR."""
        if not self._transaction():
            return None
        try:
            n = int(arg.split()[0])
        except (ValueError, IndexError):
            self.err(b"Invalid message number")
            return None
        if not 1 <= n <= len(self.uids) or n - 1 in self.deleted:
            self.err(b"No such message")
            return None
        return n - 1

    def _transaction(self) -> bool:
        if self.state != "transaction":
            self.err(b"Not logged in")
            return False
        return True

    def do_STAT(self, arg: bytes) -> None:
        if self._transaction():
            live = [i for i in range(len(self.uids)) if i not in self.deleted]
            self.ok(b"%d %d" % (len(live), sum(self.sizes[i] for i in live)))

    def do_LIST(self, arg: bytes) -> None:
        self._listing(arg, lambda i: b"%d" % self.sizes[i])

    def do_UIDL(self, arg: bytes) -> None:
        assert self.folder is not None or self.state != "transaction"
        self._listing(arg, lambda i: b"%08x%08x" % (self.uids[i], self.folder.uidvalidity))  # type: ignore[union-attr]

    def _listing(self, arg: bytes, value: Any) -> None:
        if arg.strip():
            i = self._msg(arg)
            if i is not None:
                self.ok(b"%d " % (i + 1) + value(i))
            return
        if not self._transaction():
            return
        self.ok()
        for i in range(len(self.uids)):
            if i not in self.deleted:
                self.sendLine(b"%d " % (i + 1) + value(i))
        self.sendLine(b".")

    def _send_message(self, i: int, lines: int | None) -> None:
        assert self.folder is not None
        try:
            data = self.folder.read(self.uids[i])
        except MailstoreError:
            self.err(b"Message was removed by another session")
            return
        if lines is not None:
            head, sep, body = data.partition(b"\r\n\r\n")
            body_lines = body.split(b"\r\n")
            data = head + sep + b"\r\n".join(body_lines[:lines]) + (b"\r\n" if lines and len(body_lines) > lines else b"")
        if data and not data.endswith(b"\r\n"):
            data += b"\r\n"
        # RFC 1939 3: byte-stuff lines starting with the termination octet.
        stuffed = (b"." + data if data.startswith(b".") else data).replace(b"\r\n.", b"\r\n..")
        self.transport.write(b"+OK %d octets\r\n" % self.sizes[i] + stuffed + b".\r\n")

    def do_RETR(self, arg: bytes) -> None:
        i = self._msg(arg)
        if i is not None:
            self._send_message(i, None)

    def do_TOP(self, arg: bytes) -> None:
        parts = arg.split()
        if len(parts) != 2 or not parts[1].isdigit():
            if self._transaction():
                self.err(b"Usage: TOP msg lines")
            return
        i = self._msg(parts[0])
        if i is not None:
            self._send_message(i, int(parts[1]))

    def do_DELE(self, arg: bytes) -> None:
        i = self._msg(arg)
        if i is not None:
            self.deleted.add(i)
            self.ok(b"Marked to be deleted")

    def do_RSET(self, arg: bytes) -> None:
        if self._transaction():
            self.deleted.clear()
            self.ok()

    def do_NOOP(self, arg: bytes) -> None:
        if self._transaction():
            self.ok()

    # --- XTND XMIT: sending inside POP ------------------------------------------------

    def do_XTND(self, arg: bytes) -> None:
        if arg.strip().upper() != b"XMIT":
            self.err(b"Unknown XTND command")
            return
        if not self.tls:
            self.err(b"[AUTH] Sending requires TLS")
            return
        if self.state != "transaction":
            self.err(b"[AUTH] Log in first")
            return
        self.xmit, self.xmit_size = [], 0
        self.ok(b"Start sending message.")

    def _xmit_line(self, line: bytes) -> None:
        assert self.xmit is not None
        if line == b".":
            lines, self.xmit = self.xmit, None
            limit = self.backend.cfg.relay.max_message_size
            if self.xmit_size > limit:
                self.err(b"Message exceeds the size limit of %d bytes" % limit)
                return
            assert self.account is not None
            self._hold()
            d = self.backend.send(self.account.address, self.client_ip, "POP3", b"".join(lines))
            d.addCallback(self._xmit_done)
            d.addErrback(lambda f: (log.err(f), self.err(b"[SYS/TEMP] Internal error")))
            d.addBoth(self._release)
            return
        if line.startswith(b"."):
            line = line[1:]
        self.xmit_size += len(line) + 2
        # Size-limited while reading: stop keeping data once over the limit (the rest is read and dropped).
        if self.xmit_size <= self.backend.cfg.relay.max_message_size:
            self.xmit.append(line + b"\r\n")

    def _xmit_done(self, reply: Reply) -> None:
        if reply.ok:
            self.ok(b"Message queued as " + reply.queue_id.encode() if reply.queue_id else b"Message queued")
        elif reply.temporary:
            self.err(b"[SYS/TEMP] " + reply.text.encode())
        else:
            self.err(reply.text.encode())
