"""The IMAP session: state machine, command dispatch, literals, untagged updates.

States (RFC 9051 §3): not authenticated -> authenticated -> selected -> logout. Commands
run one at a time, in order: the next event is pulled from the reader only when the
previous command has finished (pipelining is serialized, RFC 9051 §5.5), so a command's
untagged updates can never interleave with the next one's. Each literal is judged before
the client sends it (RFC 7888 §4, RFC 7889): ``NeedLiteral`` comes to the session, which
accepts it ("+" for a synchronizing literal) or refuses it.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import defer
from twisted.python import log

from appliance.mailstore import MailstoreError
from services.access import moves
from services.access.imap import metrics, storeio
from services.access.imap.dispatch import (
    AUTHENTICATED,
    COMMANDS,
    NOT_AUTHENTICATED,
    SELECTED,
)
from services.access.imap.errors import Bad, Done, No
from services.access.imap.notify import HUB, key_of
from services.access.imap.selected import Selected
from services.access.imapproto import parser as imapparser

# Unprocessed pipelined input held while a command runs; above this the transport is
# paused (it resumes when the reader drains). Literals being read do not count: the
# reader needs them to finish the command.
MAX_PENDING_INPUT = 256 * 1024
# Literals outside APPEND (a LOGIN password, a SEARCH string) are small.
MAX_OTHER_LITERAL = 64 * 1024
MAX_LINE = 64 * 1024
MAX_PREAUTH_COMMAND = 256 * 1024  # a whole command before login (LOGIN with literals, ID)
# Commands after which new mail is looked for (they exist for it, RFC 9051 §6.1.2, §6.4.1).
POLL_COMMANDS = frozenset({"NOOP", "CHECK"})
IDENT = "ISP Mail Appliance ready"

BASE_CAPS = ["IMAP4rev1", "IMAP4rev2"]
# Advertised after login: only what works (docs/access.md lists each with its test).
AUTH_CAPS = [
    "LITERAL+", "ENABLE", "ID", "IDLE", "NAMESPACE", "UIDPLUS", "UNSELECT", "CHILDREN", "MOVE",
    "SPECIAL-USE", "CONDSTORE", "QRESYNC", "ESEARCH", "SEARCHRES", "SORT", "THREAD=REFERENCES",
    "THREAD=ORDEREDSUBJECT", "LIST-EXTENDED", "LIST-STATUS", "STATUS=SIZE", "BINARY", "MULTIAPPEND",
    "CATENATE", "COMPRESS=DEFLATE", "QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE",
]
ENABLEABLE = frozenset({"CONDSTORE", "QRESYNC", "IMAP4REV2"})


class Connection(Protocol):
    """What the session needs from its transport (``transport.IMAPConnection``)."""

    secure: bool
    compressed: bool
    client_ip: str
    via: str  # the trusted fleet box proxying the client ("" when the client connected directly)

    def proxied_for(self, ip: str) -> str | None: ...
    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def start_tls(self) -> bool: ...
    def start_compress(self) -> None: ...
    def pause_input(self) -> None: ...
    def resume_input(self) -> None: ...
    def authenticated(self) -> None: ...
    def logged_in_ip_release(self) -> None: ...
    def drain(self) -> defer.Deferred[None]: ...


class Session:
    def __init__(self, conn: Connection, backend: Any) -> None:
        self.conn = conn
        self.backend = backend
        cfg = backend.cfg
        self.append_limit: int = getattr(cfg.access, "append_limit", 0) or cfg.relay.max_message_size
        self.state = NOT_AUTHENTICATED
        self.enabled: set[str] = set()
        self.reader = self._new_reader()
        self.account: Any = None
        self.store: Any = None  # the account's MailStore
        self.sel: Selected | None = None
        self.condstore = False  # RFC 7162 §3.1: on after ENABLE or the first CONDSTORE-using command
        self.busy = False
        self.closed = False
        self.closing = False
        self.idling = False
        self.cap_release: Any = None  # the connection-cap slot of the logged-in user (conncaps)
        self.move_bye: str | None = None  # an account move asked to end the session after this command
        self._pumping = False
        self._line_waiter: defer.Deferred[bytes] | None = None
        self._refresh_lock = defer.DeferredLock()

    # --- capabilities -------------------------------------------------------------------

    @property
    def rev2(self) -> bool:
        return "IMAP4REV2" in self.enabled

    @property
    def qresync(self) -> bool:
        return "QRESYNC" in self.enabled

    def capabilities(self) -> list[str]:
        caps = list(BASE_CAPS)
        if self.state == NOT_AUTHENTICATED:
            if not self.conn.secure:
                # RFC 9051 §6.2.3 / RFC 2595 §3.2: no plaintext login before TLS.
                caps += ["STARTTLS", "LOGINDISABLED"]
            else:
                caps += ["AUTH=PLAIN", "SASL-IR"]
            return caps + ["ID", "ENABLE", "LITERAL+"]
        caps += AUTH_CAPS
        if self.conn.compressed:
            caps.remove("COMPRESS=DEFLATE")  # RFC 4978 §3: not offered once active
        caps += [f"APPENDLIMIT={self.append_limit}", "X-DRAFT-I01-SENDMAIL"]
        return caps

    def capability_code(self) -> str:
        return "CAPABILITY " + " ".join(self.capabilities())

    # --- output -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.conn.write(data)

    def untagged(self, text: bytes | str) -> None:
        if isinstance(text, str):
            text = text.encode("utf-8")
        self.write(b"* " + text + b"\r\n")

    def tagged(self, tag: str, status: str, text: str, code: str | None = None) -> None:
        code_part = f"[{code}] " if code else ""
        self.write(f"{tag} {status} {code_part}{text}".encode("utf-8", "replace") + b"\r\n")

    def greeting(self) -> None:
        self.write(f"* OK [{self.capability_code()}] {IDENT}\r\n".encode())

    def bye(self, text: str, code: str | None = None) -> None:
        code_part = f"[{code}] " if code else ""
        self.write(f"* BYE {code_part}{text}\r\n".encode())
        self.closed = True
        self.conn.close()

    # --- input --------------------------------------------------------------------------

    def _new_reader(self) -> Any:
        # APPEND literals are judged against APPENDLIMIT (here, before "+"); the reader itself
        # refuses other literals over MAX_OTHER_LITERAL and commands over its max_command:
        # small before login (nothing there needs more), APPENDLIMIT + 1 MiB after.
        reader = imapparser.CommandReader(max_line=MAX_LINE, max_literal=MAX_OTHER_LITERAL,
                                          max_command=self._max_command())
        if self.rev2:
            reader.utf8_accept = True
            reader.imap4rev2 = True
        return reader

    def _max_command(self) -> int:
        return self.append_limit + (1 << 20) if self.state != NOT_AUTHENTICATED else MAX_PREAUTH_COMMAND

    def discard_input(self) -> None:
        """STARTTLS: what was pipelined in plaintext must not run inside TLS (RFC 9051 §6.2.1)."""
        self.reader = self._new_reader()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        self.pump()

    def pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self.closed and (not self.busy or self._line_waiter is not None):
                ev = self.reader.next_event()
                if ev is None:
                    break
                self._event(ev)
        finally:
            self._pumping = False
        if self.closed:
            return
        if self.busy and self.reader.buffered() > MAX_PENDING_INPUT:
            self.conn.pause_input()  # backpressure: pipelined input is bounded
        else:
            self.conn.resume_input()

    def wait_line(self) -> defer.Deferred[bytes]:
        """The next input line, raw (AUTHENTICATE responses, IDLE's DONE)."""
        self.reader.read_line()
        d: defer.Deferred[bytes] = defer.Deferred()
        self._line_waiter = d
        self.pump()
        return d

    def _event(self, ev: Any) -> None:
        if isinstance(ev, imapparser.RawLine):
            waiter, self._line_waiter = self._line_waiter, None
            if waiter is not None:
                waiter.callback(ev.data)
        elif isinstance(ev, imapparser.NeedLiteral):
            self._literal(ev)
        elif isinstance(ev, imapparser.Bad):
            if ev.tag and ev.code == "BADCHARSET":
                # RFC 9051 §6.4.4: an unsupported charset is NO [BADCHARSET (supported ones)].
                metrics.COMMANDS.labels("SEARCH", "NO").inc()
                self.tagged(ev.tag, "NO", ev.text, "BADCHARSET (US-ASCII UTF-8)")
            elif ev.tag and ev.code == "TOOBIG":
                # RFC 7889 §4: a message over APPENDLIMIT is NO [TOOBIG] (refused before it is sent).
                metrics.COMMANDS.labels("APPEND", "NO").inc()
                self.tagged(ev.tag, "NO", ev.text, "TOOBIG")
            else:
                # The parser says NO for a well-formed command it cannot carry out (bad mUTF-7 name).
                status = getattr(ev, "status", "BAD") if ev.tag else "BAD"
                metrics.COMMANDS.labels("(syntax)", status).inc()
                code = f"[{ev.code}] " if ev.code else ""
                self.write(f"{ev.tag or '*'} {status} {code}{ev.text}\r\n".encode("utf-8", "replace"))
        elif isinstance(ev, imapparser.Fatal):
            self.bye(ev.text)
        else:
            self._run(ev)

    def _literal(self, ev: Any) -> None:
        """Accept or refuse a literal before its bytes arrive (RFC 7888 §4, RFC 7889 §4)."""
        if self.state == NOT_AUTHENTICATED and ev.command not in ("LOGIN", "AUTHENTICATE", "ID"):
            limit, code = 0, "CLIENTBUG"  # nothing else takes a literal before login
        elif ev.command == "APPEND":
            limit, code = self.append_limit, "TOOBIG"
        else:
            limit, code = MAX_OTHER_LITERAL, "TOOBIG"
        if ev.size > limit:
            self.reader.refuse_literal()
            metrics.COMMANDS.labels(ev.command, "NO").inc()
            self.tagged(ev.tag, "NO", f"literal of {ev.size} octets is over the limit of {limit}", code)
            return
        self.reader.accept_literal()
        if not ev.nonsync:
            self.write(b"+ Ready for literal data\r\n")

    # --- running commands ---------------------------------------------------------------

    def _run(self, cmd: Any) -> None:
        spec = COMMANDS.get(cmd.name)
        if spec is None:
            self.tagged(cmd.tag, "BAD", f"unknown command {cmd.name}")
            return
        if self.state not in spec.states:
            metrics.COMMANDS.labels(cmd.name, "BAD").inc()
            self.tagged(cmd.tag, "BAD", f"{cmd.name} is not valid in the {self.state} state")
            return
        if (cmd.uid and not spec.uid) or (not cmd.uid and not spec.plain):
            self.tagged(cmd.tag, "BAD", f"{'UID ' if cmd.uid else ''}{cmd.name} is not a command")
            return
        self.busy = True
        d = defer.ensureDeferred(self._execute(spec, cmd))
        d.addErrback(self._crashed)
        d.addBoth(self._finished)

    async def _execute(self, spec: Any, cmd: Any) -> None:
        from services.access.imapmsg.search import SearchError

        status, code, text = "OK", None, f"{cmd.name} completed"
        try:
            result = await spec.handler(self, cmd)
            if result is None:  # the handler answered itself (STARTTLS, COMPRESS: before switching)
                metrics.COMMANDS.labels(cmd.name, "OK").inc()
                return
            code, text = result.code, result.text
        except No as exc:
            status, code, text = "NO", exc.code, exc.text
        except Bad as exc:
            status, code, text = "BAD", exc.code, exc.text
        except MailstoreError as exc:
            status, code, text = "NO", getattr(exc, "code", None), str(exc)
        except SearchError as exc:
            status, code, text = "BAD", None, f"invalid search: {exc}"
        except Exception:
            if self.closed:
                return  # the connection went away under the command (IDLE, a slow FETCH)
            log.err(None, f"imap: {cmd.name} failed")
            status, code, text = "NO", "SERVERBUG", "internal error, try again later"
        if self.closed:
            return
        if self.sel is not None and cmd.name not in ("LOGOUT", "SELECT", "EXAMINE"):
            allow = spec.expunge_ok or cmd.uid
            # Held expunges are reported at the first command that may report them.
            if self.sel.dirty or cmd.name in POLL_COMMANDS or (allow and self.sel.held):
                try:
                    await self.refresh(allow, sync=cmd.name in POLL_COMMANDS)
                except Exception:
                    log.err(None, "imap: refresh failed")
        metrics.COMMANDS.labels(cmd.name, status).inc()
        self.tagged(cmd.tag, status, text, code)
        if self.closing:
            self.closed = True
            self.conn.close()

    def _crashed(self, f: Any) -> None:
        log.err(f, "imap: session error")
        self.bye("internal error", "SERVERBUG")

    def _finished(self, _: Any) -> None:
        if self.move_bye is not None and not self.closed:
            self.bye(self.move_bye, "UNAVAILABLE")
        if self.closed:
            self.busy = False
            return
        # A client that pipelines without reading our answers would make them pile up in
        # the transport: the next command runs only once the output has drained.
        drained = self.conn.drain()
        if drained.called:
            self._next()
        else:
            self.conn.pause_input()
            drained.addCallback(lambda _: self._next())

    def _next(self) -> None:
        self.busy = False
        if not self.closed:
            self.pump()

    # --- state changes ------------------------------------------------------------------

    def logged_in(self, account: Any, store: Any) -> None:
        self.account = account
        self.store = store
        self.state = AUTHENTICATED
        self.reader.max_command = self._max_command()  # APPEND may now bring APPENDLIMIT
        self.conn.authenticated()  # RFC 9051 §5.4: the autologout timer becomes 30 minutes
        moves.REGISTRY.join(account.address, self)

    # --- account moves (services/access/moves.py) -----------------------------------------

    def move_end(self, text: str) -> None:
        if self.closed:
            return
        if self.busy and not self.idling:
            self.move_bye = text  # a running command finishes first (_finished says BYE)
            return
        self.bye(text, "UNAVAILABLE")

    def move_ended(self) -> bool:
        # Not "connection lost": Twisted's TLS waits for the client's close_notify, which a client
        # that is not reading never sends. Closed is enough: nothing runs after the BYE but an
        # IDLE waiting for its DONE (which writes nothing) or a refresh in flight (waited for).
        return self.closed and (not self.busy or self.idling) and not self._refresh_lock.locked

    def select(self, sel: Selected | None) -> None:
        if self.sel is not None:
            HUB.leave(key_of(self.store.root, self.sel.name), self)
        self.sel = sel
        if sel is None:
            if self.state == SELECTED:
                self.state = AUTHENTICATED
        else:
            HUB.join(key_of(self.store.root, sel.name), sel.mailbox, self)
            self.state = SELECTED
        metrics.WATCHED.set(HUB.watching())

    def notify_others(self, name: str | None = None) -> None:
        """This session changed mailbox NAME (default: the selected one): wake the others."""
        if self.store is None:
            return
        target = name if name is not None else (self.sel.name if self.sel else None)
        if target is not None:
            HUB.changed(key_of(self.store.root, target), source=self)

    def mailbox_changed(self) -> None:
        """From the hub: the selected mailbox changed (delivery, another session)."""
        if self.sel is None or self.closed:
            return
        self.sel.dirty = True
        if self.idling:
            d = defer.ensureDeferred(self.refresh(True))
            d.addErrback(lambda f: log.err(f, "imap: IDLE update failed"))

    async def refresh(self, allow_expunge: bool, sync: bool = False) -> None:
        """Bring the client up to date with the selected mailbox (untagged EXISTS/EXPUNGE/FETCH)."""
        await self._refresh_lock.acquire()
        try:
            sel = self.sel
            if sel is None:
                return
            sel.dirty = False
            try:
                ch = await storeio.run(sel.gather, sync)
            except MailstoreError as exc:
                if exc.code != "NONEXISTENT":
                    raise
                # The selected mailbox was deleted (or renamed) by another session: nothing here
                # can be answered any more (RFC 9051 §7.1.5 BYE).
                self.bye(f"mailbox {sel.name} no longer exists")
                return
            if sel is not self.sel or self.closed:
                return
            for line in sel.apply(ch, allow_expunge=allow_expunge, condstore=self.condstore,
                                  qresync=self.qresync, rev2=self.rev2):
                self.write(line)
        finally:
            self._refresh_lock.release()

    async def refresh_done(self) -> None:
        """Wait for an IDLE update in flight (its writes must come before the tagged OK)."""
        await self._refresh_lock.acquire()
        self._refresh_lock.release()

    def enable(self, name: str) -> None:
        self.enabled.add(name)
        if name in ("CONDSTORE", "QRESYNC"):
            self.condstore = True
        if name == "IMAP4REV2":
            self.reader.utf8_accept = True
            self.reader.imap4rev2 = True

    def connection_lost(self) -> None:
        self.closed = True
        if self.account is not None:
            moves.REGISTRY.leave(self.account.address, self)
        if self.sel is not None and self.store is not None:
            HUB.leave(key_of(self.store.root, self.sel.name), self)
            metrics.WATCHED.set(HUB.watching())
            self.sel = None
        if self.cap_release is not None:
            release, self.cap_release = self.cap_release, None
            release()
        waiter, self._line_waiter = self._line_waiter, None
        if waiter is not None:
            waiter.errback(ConnectionError("connection lost"))


__all__ = ["AUTHENTICATED", "NOT_AUTHENTICATED", "SELECTED", "Done", "Session"]
