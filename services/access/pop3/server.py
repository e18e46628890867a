"""The POP3 session (RFC 1939) with CAPA and response codes (RFC 2449, 3206), SASL PLAIN (RFC 5034), STLS (RFC 2595).

States (RFC 1939 §3): AUTHORIZATION until USER/PASS or AUTH succeeds and the
maildrop is locked; TRANSACTION; UPDATE on QUIT (deletions happen only there).
Login needs TLS (implicit on pop3s, or after STLS).

Input is framed here and parsed by ``commands.parse``; commands are answered in
order, one at a time (RFC 2449 §6.6 PIPELINING): while one waits for a worker
thread (login, the maildrop, a message being streamed) the following ones stay
buffered, and past ``MAX_INPUT`` buffered octets the transport stops reading.

XTND XMIT (qpopper, Eudora) sends a message through the relay's internal socket.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter
from twisted.internet import defer, interfaces, threads
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python import log
from twisted.python.failure import Failure
from zope.interface import implementer

from appliance.accounts import Account
from appliance.submitclient import Reply
from services.access import moves
from services.access.backend import Backend, LoginRefused, LoginUnavailable
from services.access.conncaps import CapReached, Lease
from services.access.imap import metrics
from services.access.pop3.commands import (
    MAX_COMMAND_LINE,
    MAX_SASL_LINE,
    TOO_LONG,
    Command,
    Invalid,
    SaslError,
    decode_base64,
    parse,
    plain_credentials,
)
from services.access.pop3.framing import LineFramer
from services.access.pop3.maildrop import LOCKS, Maildrop, MaildropLocks, account_store
from services.access.pop3.stream import Stream
from services.access.pop3.transaction import TransactionCommands
from services.access.pop3.transport import set_nodelay
from services.access.pop3.xmit import MAX_XMIT_LINE, Incoming

MAX_INPUT = 65536  # octets of pipelined input buffered before the transport is paused
# Unknown commands in a row before the connection is closed (Dovecot's limits: a client that
# speaks another protocol, e.g. HTTP sent to port 110, is not answered line by line for long).
MAX_BAD_BEFORE_LOGIN = 3
MAX_BAD_LOGGED_IN = 21

# Sessions, connections and logins are the access service's metrics (label protocol="pop3").
COMMANDS = Counter("access_pop3_commands", "POP3 commands answered, by command and result (ok, err)",
                   ["command", "result"])


@implementer(IPushProducer)
class POP3Server(TransactionCommands, Protocol, TimeoutMixin):
    """One POP3 connection; also the transport's producer, so replies never pile up unread."""

    timeOut = 600  # RFC 1939 §3: an autologout timer of at least 10 minutes

    def __init__(self, backend: Backend, tls_context: Any, implicit_tls: bool,
                 locks: MaildropLocks = LOCKS) -> None:
        self.backend = backend
        self.ctx = tls_context
        self.tls = implicit_tls
        self.locks = locks
        self.state = "authorization"
        self._framer = LineFramer()
        self._reading_paused = False
        self._output_paused = False  # the transport's write buffer is full: produce nothing more
        self._busy = False  # a command is waiting for a worker thread or a stream
        self._closed = False
        self._quit = False  # QUIT seen: nothing after it is read
        self._verb = ""
        self._answered = False
        self._bad = 0  # unknown commands in a row
        self._user: str | None = None
        self._sasl_pending = False
        self._ip_lease: Lease | None = None
        self._user_lease: Lease | None = None
        self._locked: str | None = None
        self.account: Account | None = None
        self.drop: Maildrop | None = None
        self._deleted: set[int] = set()
        self._retrieved: set[int] = set()
        self._live = (0, 0)  # messages and octets not marked deleted (STAT)
        self._stream: Stream | None = None
        self._xmit: Incoming | None = None  # XTND XMIT: the message being received
        self.proxy: Any = None  # logged in to the account's home box: bytes go there (services/access/proxy.py)
        self._credentials: tuple[str, str] | None = None  # of the login in progress, for the proxy
        self.origin = self.via = ""  # the customer's address and the fleet box proxying it (XCLIENT)
        self._move_err: str | None = None  # an account move asked to end the session (services/access/moves.py)

    # --- connection ---------------------------------------------------------------------

    @property
    def client_ip(self) -> str:
        return self.origin or self.peer_ip

    @property
    def peer_ip(self) -> str:
        return str(getattr(self.transport.getPeer(), "host", "unknown"))

    def connectionMade(self) -> None:
        set_nodelay(self.transport)
        metrics.CONNECTIONS.labels("pop3").inc()
        try:
            self._ip_lease = self.backend.caps.open_ip(self.client_ip, "pop3")
        except CapReached as exc:
            # RFC 3206 §4 SYS/TEMP: a resource shortage that may go away; nothing is read from this client.
            self.transport.write(b"-ERR [SYS/TEMP] " + exc.text.encode() + b"\r\n")
            self._closed = True
            self._lose()
            return
        metrics.SESSIONS.labels("pop3").inc()
        self.transport.registerProducer(self, True)
        self.setTimeout(self.timeOut)
        self._line(b"+OK POP3 ready")

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.setTimeout(None)
        if not self._closed:
            metrics.SESSIONS.labels("pop3").dec()
        self._closed = True
        if self.account is not None:
            moves.REGISTRY.leave(self.account.address, self)
        self._release()
        if self.proxy is not None:
            from services.access.proxy import client_gone

            proxy, self.proxy = self.proxy, None
            client_gone(proxy)

    def _release(self) -> None:
        """Give back everything the session holds (idempotent). Without QUIT nothing is deleted (RFC 1939 §6)."""
        for lease in (self._ip_lease, self._user_lease):
            if lease is not None:
                lease.release()
        if self._locked is not None:
            self.locks.release(self._locked)
            self._locked = None
        self.drop = None

    def timeoutConnection(self) -> None:
        self._line(b"-ERR Autologout; idle for too long")
        self._lose()

    def _lose(self) -> None:
        """Close the connection. The producer goes first: Twisted's TLS layer finishes
        loseConnection only once no producer is registered (the socket would stay open)."""
        self.transport.unregisterProducer()  # a no-op when none is registered
        self.transport.loseConnection()

    # --- output ---------------------------------------------------------------------------

    def _line(self, data: bytes) -> None:
        if not self._closed:
            self.transport.write(data + b"\r\n")

    def _status(self, ok: bool, text: str) -> None:
        if not self._answered and self._verb:
            COMMANDS.labels(self._verb, "ok" if ok else "err").inc()
            self._answered = True
        head = b"+OK" if ok else b"-ERR"
        self._line(head + b" " + text.encode() if text else head)

    def ok(self, text: str = "") -> None:
        self._status(True, text)

    def err(self, text: str) -> None:
        self._status(False, text)

    # --- input: framing and dispatch --------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.proxy is not None:
            self.resetTimeout()
            self.proxy.transport.write(data)  # proxied to the home box: relayed unchanged
            return
        self._framer.feed(data)
        self._process()

    def _process(self) -> None:
        while not (self._busy or self._closed or self._quit or self._output_paused):
            line = self._next_line()
            if line is None:
                break
            self.resetTimeout()
            try:
                self._dispatch(line)
            except Exception:
                log.err(None, "pop3: command failed")
                self.err("[SYS/TEMP] Internal error")
        self._flow()

    # --- IPushProducer: the transport's write buffer -----------------------------------------

    def pauseProducing(self) -> None:
        self._output_paused = True
        if self._stream is not None:
            self._stream.pause()

    def resumeProducing(self) -> None:
        self._output_paused = False
        if self._stream is not None:
            self._stream.resume()
        elif not self._busy:
            self._process()

    def stopProducing(self) -> None:
        if self._stream is not None:
            self._stream.stop()

    def _flow(self) -> None:
        """Pause reading while too much pipelined input is waiting; resume once it is worked off."""
        if self._closed:
            return
        waiting = self._framer.buffered()
        if waiting > MAX_INPUT and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()
        elif waiting <= MAX_INPUT and self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()

    def _line_limit(self) -> int:
        if self._xmit is not None:
            return MAX_XMIT_LINE
        return MAX_SASL_LINE if self._sasl_pending else MAX_COMMAND_LINE

    def _next_line(self) -> bytes | None:
        return self._framer.next_line(self._line_limit())

    def _dispatch(self, line: bytes) -> None:
        if self._xmit is not None:
            self._xmit_line(line)
            return
        if self._sasl_pending:
            self._sasl_pending = False
            self._verb, self._answered = "AUTH", False
            self._sasl_response(line)
            return
        cmd = Invalid(f"Command line too long (at most {MAX_COMMAND_LINE} octets, RFC 2449)") \
            if line is TOO_LONG else parse(line)
        if isinstance(cmd, Invalid):
            self._verb, self._answered = "", False
            if cmd.text.startswith(("Unknown command", "Command line too long")):
                self._unknown(cmd.text)
            else:
                self.err(cmd.text)
            return
        self._verb, self._answered = cmd.verb, False
        bad = self._bad
        getattr(self, "do_" + cmd.verb)(cmd)
        if self._bad == bad:
            self._bad = 0

    def _unknown(self, text: str) -> None:
        """Answer an unknown command (or one not valid in this state); too many in a row end the session."""
        self.err(text)
        self._bad += 1
        if self._bad >= (MAX_BAD_BEFORE_LOGIN if self.state == "authorization" else MAX_BAD_LOGGED_IN):
            self._line(b"-ERR Too many invalid bad commands.")
            self._quit = True
            self._lose()

    def _wait(self, d: defer.Deferred[Any]) -> None:
        """Hold further commands until D has fired (its callbacks answer the client)."""
        self._busy = True

        def done(result: Any) -> None:
            if isinstance(result, Failure):
                log.err(result, "pop3: command failed")
                self.err("[SYS/TEMP] Internal error")
            self._busy = False
            if self._move_err is not None and not (self._closed or self._quit):
                self._end_for_move()
            elif not self._closed:
                self._process()

        d.addBoth(done)

    # --- any state --------------------------------------------------------------------------

    def _stls_available(self) -> bool:
        return (not self.tls and self.state == "authorization" and self.ctx is not None
                and interfaces.ITLSTransport(self.transport, None) is not None)

    def do_CAPA(self, cmd: Command) -> None:
        caps = [b"CAPA", b"TOP", b"UIDL", b"RESP-CODES", b"PIPELINING", b"AUTH-RESP-CODE"]
        if self.state == "authorization":
            if self._stls_available():
                caps.append(b"STLS")
            if self.tls:  # RFC 2595 §6: no plaintext passwords over an unprotected connection
                caps += [b"USER", b"SASL PLAIN"]
        caps.append(b"IMPLEMENTATION ISP-Mail-Appliance")
        self.ok("Capability list follows")
        self.transport.write(b"".join(c + b"\r\n" for c in caps) + b".\r\n")

    def do_QUIT(self, cmd: Command) -> None:
        self._quit = True
        if self.state != "transaction" or self.drop is None:
            self.ok("Logging out")
            self._lose()
            return
        # RFC 1939 §6: QUIT from TRANSACTION enters UPDATE, which removes what was marked deleted.
        self.state = "update"
        drop = self.drop
        d = threads.deferToThread(drop.update, set(self._deleted), set(self._retrieved))

        def updated(left: list[int]) -> None:
            if left:
                self.err(f"[SYS/TEMP] Some deleted messages were not removed: {' '.join(map(str, left[:20]))}")
            else:
                self.ok("Logging out")

        def failed(f: Failure) -> None:
            log.err(f, "pop3: UPDATE failed")
            self.err("[SYS/TEMP] Some deleted messages were not removed")

        d.addCallbacks(updated, failed)
        d.addBoth(lambda _: self._lose())
        self._wait(d)

    def do_NOOP(self, cmd: Command) -> None:
        if self._need_transaction():
            self.ok()

    # --- AUTHORIZATION ---------------------------------------------------------------------

    def do_STLS(self, cmd: Command) -> None:
        if self.tls:
            self.err("TLS is already active")
            return
        if not self._stls_available():
            if self.state != "authorization":
                self._unknown("Unknown command in this state")
            else:
                self.err("STLS not available")
            return
        self.ok("Begin TLS negotiation now")
        # RFC 2595 §4: anything pipelined behind STLS arrived in plaintext: discard it.
        self._framer.clear()
        self._user = None
        self.transport.startTLS(self.ctx)
        self.tls = True

    def _login_allowed(self) -> bool:
        if self.state != "authorization":
            self._unknown("Unknown command in this state")
            return False
        if not self.tls:
            self.err("[AUTH] Plaintext authentication disallowed on non-secure connections; use STLS")
            return False
        return True

    def do_USER(self, cmd: Command) -> None:
        if self._login_allowed():
            self._user = cmd.args[0]
            self.ok()

    def do_PASS(self, cmd: Command) -> None:
        if not self._login_allowed():
            return
        if not self._user:
            self.err("No username given (USER first)")
            return
        user, self._user = self._user, None
        self._login(user, cmd.args[0])

    def take_input(self) -> bytes:
        """Input not read yet, removed (a proxied login hands it to the home box)."""
        rest = self._framer.take_rest()
        self._quit = True  # nothing more is read here: the home box's session answers from now on
        return rest

    def do_AUTH(self, cmd: Command) -> None:
        if not cmd.args:
            # RFC 1734 clients ask for the mechanism list with a bare AUTH (Dovecot answers it too).
            if self.state != "authorization":
                self._unknown("Unknown command in this state")
                return
            self.ok()
            self.transport.write((b"PLAIN\r\n" if self.tls else b"") + b".\r\n")
            return
        if not self._login_allowed():
            return
        if cmd.args[0].upper() != "PLAIN":
            self.err("[AUTH] Unsupported authentication mechanism")
            return
        if len(cmd.args) == 2:
            self._sasl_response(cmd.args[1].encode())
            return
        self._sasl_pending = True
        self._line(b"+ ")  # RFC 5034 §4: an empty challenge

    def _sasl_response(self, line: bytes) -> None:
        if line is TOO_LONG:
            self.err(f"SASL response too long (at most {MAX_SASL_LINE} octets)")
            return
        text = line.decode("ascii", "replace").strip()
        if text == "*":  # RFC 5034 §4: the client cancels; the server MUST reject the AUTH
            self.err("Authentication aborted by client")
            return
        try:
            login, password = plain_credentials(decode_base64(text))
        except SaslError as exc:
            self.err(str(exc))
            return
        self._login(login, password)

    def _login(self, user: str, password: str) -> None:
        self._credentials = (user, password)  # for a login proxied to the home box (services/access/proxy.py)
        d = self.backend.login(user, password, self.client_ip, protocol="pop3")
        d.addCallbacks(self._authenticated, self._login_failed)
        self._wait(d)

    def _login_failed(self, f: Failure) -> None:
        if f.check(LoginRefused):
            metrics.LOGINS.labels("pop3", "failed").inc()
            self.err("[AUTH] Authentication failed")
        elif f.check(LoginUnavailable):
            metrics.LOGINS.labels("pop3", "unavailable").inc()
            self.err("[SYS/TEMP] " + f.value.reply.text)
        else:
            metrics.LOGINS.labels("pop3", "unavailable").inc()
            log.err(f, "pop3: login failed")
            self.err("[SYS/TEMP] Temporary authentication failure")

    def _authenticated(self, account: Account) -> defer.Deferred[None] | None:
        if self._closed:
            return None
        home = self.backend.cfg.fleet.home_of(getattr(account, "home", ""))
        if home:  # the maildrop is on another box of the fleet (docs/fleet.md "Home boxes")
            from services.access.proxy import proxy_pop3

            return defer.ensureDeferred(proxy_pop3(self, account, home))
        if moves.REGISTRY.held(account.address):  # `appliance user move` is copying this maildrop
            self.err("[SYS/TEMP] " + moves.HELD_TEXT)
            return None
        try:
            lease = self.backend.caps.open_user(account, self.client_ip, "pop3")
        except CapReached as exc:
            self.err("[IN-USE] " + exc.text)
            return None
        # RFC 1939 §8: an exclusive lock on the maildrop for the whole TRANSACTION state.
        if not self.locks.acquire(account.address):
            lease.release()
            self.err("[IN-USE] Mailbox is locked by another POP3 session")
            return None
        self._user_lease, self._locked = lease, account.address
        d = threads.deferToThread(Maildrop.open, lambda: account_store(self.backend, account.address))
        d.addCallbacks(lambda drop: self._opened(account, drop), self._open_failed)
        return d

    def _opened(self, account: Account, drop: Maildrop) -> None:
        if self._closed:  # the client went away meanwhile (and _release ran): nothing to keep
            return
        if moves.REGISTRY.held(account.address):  # held while the maildrop was opened
            self._release()
            self.err("[SYS/TEMP] " + moves.HELD_TEXT)
            return
        self.account, self.drop = account, drop
        moves.REGISTRY.join(account.address, self)
        self._live = (len(drop), sum(drop.sizes))
        if self._ip_lease is not None:  # logged in: no longer counted as an unauthenticated connection
            self._ip_lease.release()
        self.state = "transaction"
        metrics.LOGINS.labels("pop3", "ok").inc()
        self.ok(f"Logged in, {len(drop)} messages")

    # --- account moves (services/access/moves.py) ---------------------------------------------

    def move_end(self, text: str) -> None:
        if self._closed or self._quit:
            return
        self._move_err = text
        if not self._busy:
            self._end_for_move()

    def _end_for_move(self) -> None:
        # Closed without entering UPDATE (RFC 1939 §6): messages marked deleted stay.
        self._quit = True
        self._line(b"-ERR [SYS/TEMP] " + (self._move_err or "").encode())
        self._lose()

    def move_ended(self) -> bool:
        # Closing is enough (the TLS layer may wait for the client's close_notify): after it
        # no command is read, and none was running.
        return self._closed or (self._move_err is not None and self._quit and not self._busy)

    def _open_failed(self, f: Failure) -> None:
        log.err(f, "pop3: cannot open the maildrop")
        if self._user_lease is not None:
            self._user_lease.release()
            self._user_lease = None
        if self._locked is not None:
            self.locks.release(self._locked)
            self._locked = None
        self.err("[SYS/TEMP] Cannot open the mailbox")

    # --- XTND XMIT: sending inside POP ----------------------------------------------------------

    def do_XCLIENT(self, cmd: Command) -> None:
        from services.access.pop3.xclient import handle

        handle(self, cmd.args)

    def do_XTND(self, cmd: Command) -> None:
        if cmd.args[0].upper() != "XMIT":
            self.err("Unknown XTND command")
            return
        if not self.tls:
            self.err("[AUTH] Sending requires TLS")
            return
        if self.state != "transaction":
            self.err("[AUTH] Log in first")
            return
        self._xmit = Incoming(self.backend.cfg.relay.max_message_size)
        self.ok("Start sending message.")

    def _xmit_line(self, line: bytes) -> None:
        assert self._xmit is not None and self.account is not None
        if not self._xmit.add(line, too_long=line is TOO_LONG):
            return
        incoming, self._xmit = self._xmit, None
        if incoming.refusal:
            self.err(incoming.refusal)
            return
        d = self.backend.send(self.account.address, self.client_ip, "POP3", incoming.message())
        d.addCallback(self._xmit_done)
        self._wait(d)

    def _xmit_done(self, reply: Reply) -> None:
        if reply.ok:
            self.ok("Message queued as " + reply.queue_id if reply.queue_id else "Message queued")
        elif reply.temporary:
            self.err("[SYS/TEMP] " + reply.text)
        else:
            self.err(reply.text)
