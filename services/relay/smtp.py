"""The SMTP protocol layer: aiosmtpd's ``SMTP`` with the relay's rules wired in.

What is changed from aiosmtpd 1.4.6, and why:

- every reply comes from ``appliance.policy.verdicts`` (aiosmtpd's own strings
  are translated in ``push``), and an unexpected exception answers
  ``451 4.3.0``, never aiosmtpd's default ``500``;
- a connection the policy refuses gets its verdict instead of the greeting and
  is closed (``554 5.7.1`` for outsiders on port 25);
- AUTH is PLAIN/LOGIN, only after TLS (``530 5.7.0`` before), and the password
  hash is checked in a thread pool so argon2 never blocks the event loop;
- DATA is streamed to the spool as it arrives (services/relay/data.py decodes
  it): only the header section is held in memory, so a session's memory does
  not grow with the message. Only ``<CRLF>.<CRLF>`` ends it; a bare LF or CR in
  the data (SMTP smuggling, RFC 5321 2.3.8) refuses the message; the size limit
  answers ``552 5.3.4`` after the data is drained (RFC 5321 4.2.5);
- header changes (Bcc, Date, Message-ID, DKIM, Received) are the policy's
  modifier stage (appliance/policy/modifiers.py), run in a worker thread;
- ``250`` after DATA only once the spool has fsynced the message.
"""

from __future__ import annotations

import asyncio
import binascii
import inspect
import logging
import re
import socket
import struct
import time
from base64 import b64decode
from typing import TYPE_CHECKING, Any

import aiosmtpd.smtp
from aiosmtpd.smtp import MISSING, SMTP, TLSSetupException

from appliance import metrics
from appliance.accounts import AccountsUnavailable
from appliance.addresses import AddressError, normalize_address
from appliance.policy.session import Session as PolicySession
from appliance.policy.verdicts import (
    AUTH_ABORTED,
    AUTH_ALREADY,
    AUTH_BAD_MECH,
    AUTH_FAILED,
    AUTH_NOT_OFFERED,
    AUTH_OK,
    AUTH_SYNTAX,
    AUTH_UNAVAILABLE,
    INTERNAL_ERROR,
    NEED_RCPT,
    RECIPIENT_OK,
    SENDER_OK,
    STARTTLS_FIRST,
    TLS_ALREADY,
    TLS_NOT_AVAILABLE,
    Verdict,
    translate,
)
from appliance.spool import faults
from services.relay.data import DataDecoder
from services.relay.receive import Receiver
from services.relay.tls import describe

if TYPE_CHECKING:
    from services.relay.app import RelayApp

log = logging.getLogger("relay.smtp")

DATA_BLOCK = 65536
SUBMISSION = ("submission", "submissions")
# Per-connection command budgets (aiosmtpd answers "421 4.7.0 ... sent too many times" and closes):
# generous for mail, tight for what only a prober repeats.
COMMAND_LIMITS = {"*": 100_000, "AUTH": 10, "EHLO": 20, "HELO": 20, "STARTTLS": 2, "NOOP": 1000, "VRFY": 10,
                  "XUSER": 5}
_AUTH_PARAM = re.compile(r"\s+AUTH=\S*", re.IGNORECASE)
# <local@domain> made only of atom characters and a dotted domain: nothing for a parser to interpret.
_PLAIN_PATH = re.compile(r"<([A-Za-z0-9!#$&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+)>(.*)", re.DOTALL)


class _InspectForAiosmtpd:
    """Stands in for the ``inspect`` module inside ``aiosmtpd.smtp`` (1.4.6).

    aiosmtpd calls ``inspect.getmembers()`` on the protocol object and on the
    handler for every new connection, only to find their ``auth_*`` methods:
    about 1 ms per connection, most of the cost of setting one up. This gives
    the same answer (the ``auth_*`` members, bound to OBJ) with the names
    looked up once per class, and caches ``signature()`` per function.
    """

    def __init__(self) -> None:
        self._auth_names: dict[type, tuple[str, ...]] = {}
        self._signatures: dict[object, inspect.Signature] = {}

    def getmembers(self, obj: object) -> list[tuple[str, Any]]:
        names = self._auth_names.get(type(obj))
        if names is None:
            names = tuple(n for n, _ in inspect.getmembers(obj) if n.startswith("auth_"))
            self._auth_names[type(obj)] = names
        return [(n, getattr(obj, n)) for n in names]

    def signature(self, fn: Any) -> inspect.Signature:
        key = getattr(fn, "__func__", fn)
        sig = self._signatures.get(key)
        if sig is None:
            sig = self._signatures[key] = inspect.signature(fn)
        return sig


aiosmtpd.smtp.inspect = _InspectForAiosmtpd()  # type: ignore[attr-defined]


class RelaySMTP(SMTP):
    """One client connection on one listener."""

    def __init__(self, app: RelayApp, listener: str, *, starttls: bool, implicit_tls: bool) -> None:
        self.app = app
        self.listener = listener
        self.implicit_tls = implicit_tls
        self.psession: PolicySession | None = None
        self._refusal: Verdict | None = None
        self._close_after_reply = False
        self._counted = False
        self._decoder: DataDecoder | None = None
        self._data_ended = 0.0
        cfg = app.cfg
        super().__init__(
            app.handler,
            data_size_limit=cfg.relay.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=cfg.box.hostname,
            ident="ESMTP internal" if listener == "internal" else "ESMTP",
            tls_context=app.tls_plain if starttls else None,
            require_starttls=False,  # policy answers 530 5.7.0 itself, with its own text
            auth_required=False,
            auth_require_tls=True,
            timeout=300,
            command_call_limit=COMMAND_LIMITS,
            loop=app.loop,
        )

    # --- connection ------------------------------------------------------------------------

    def _peer(self, transport: asyncio.BaseTransport) -> tuple[str, int | None]:
        if self.listener == "internal":
            sock = transport.get_extra_info("socket")
            uid = None
            if sock is not None:
                # struct ucred {pid_t pid; uid_t uid; gid_t gid;} (socket(7))
                _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                        struct.calcsize("3i")))
            return "127.0.0.1", uid
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else "0.0.0.0"
        if ip.startswith("::ffff:"):
            ip = ip[7:]
        return ip, None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.psession is None
        if first:
            ip, uid = self._peer(transport)
            app = self.app
            self.psession = PolicySession(
                listener=self.listener,  # type: ignore[arg-type]
                client_ip=ip,
                registry=app.registry.snapshot,
                registry_expired=app.registry.expired,
                peer_uid=uid,
            )
            if self.implicit_tls:
                self._note_tls(transport)
            metrics.CONNECTIONS.labels(self.listener).inc()
            metrics.SESSIONS_OPEN.labels(self.listener).inc()
            self._counted = True
            app.sessions.add(self)
            try:
                self._refusal = app.pipeline.connect(self.psession)
            except Exception:  # pragma: no cover - Pipeline converts check errors already
                log.exception("connect policy failed")
                self._refusal = INTERNAL_ERROR.verdict()
        super().connection_made(transport)
        if not first:
            # STARTTLS finished: aiosmtpd has already discarded any plaintext
            # pipelined after the STARTTLS command (RFC 3207 4.2, command injection).
            self._note_tls(transport)

    def _note_tls(self, transport: asyncio.BaseTransport) -> None:
        assert self.psession is not None
        text, spki = describe(transport.get_extra_info("ssl_object"))
        self.psession.tls = text is not None
        self.psession.notes["tls"] = text
        self.psession.client_spki = spki

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:
            self._counted = False
            metrics.SESSIONS_OPEN.labels(self.listener).dec()
            self.app.sessions.discard(self)
            if self.psession is not None:
                self.app.pipeline.disconnect(self.psession)
        super().connection_lost(error)

    def eof_received(self) -> bool:
        # aiosmtpd cancels the session on EOF but keeps the socket half-open
        # (until its 300 s timeout) if that happens before the session task ran;
        # the client is gone, so close (returning False closes the transport).
        super().eof_received()
        return False

    async def _handle_client(self) -> None:
        if self._refusal is not None:
            # Refused at the greeting: the verdict replaces the 220 banner, then close.
            self._close_after_reply = True
            await self.push(self._refusal.reply())
            return
        try:
            await super()._handle_client()
        finally:
            # aiosmtpd leaves the socket half-open (until its 300 s timeout) when the
            # client hangs up before the greeting is written; close it whatever happened.
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status = translate(status)
        await super().push(status)
        if self._close_after_reply and self.transport is not None:
            self._close_after_reply = False
            self.transport.close()

    async def reply(self, verdict: Verdict) -> None:
        if verdict.close:
            self._close_after_reply = True
        await self.push(verdict.reply())

    def _set_rset_state(self) -> None:
        super()._set_rset_state()
        if self.psession is not None:
            self.psession.reset_transaction()

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()
        if self.psession is not None:
            self.psession.reset_transaction()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's parser, but the policy sees the address as written.

        The email package quietly drops a source route (``<@a:b@c>``) and
        re-quotes local parts; the policy must see them to refuse them.
        """
        stripped = arg.lstrip()
        if stripped.startswith("<>"):
            return "<>", stripped[2:]  # the null reverse-path (RFC 5321 4.5.5); aiosmtpd calls it a syntax error
        plain = _PLAIN_PATH.match(stripped)
        if plain:
            # The common case, without the email package's (slow) RFC 5322 parser.
            return plain.group(1), plain.group(2)
        try:
            address, rest = super()._getaddr(arg)
        except (IndexError, AttributeError, ValueError, TypeError, NameError):
            # The email package's parser fails on some malformed paths instead of raising
            # HeaderParseError: "<" alone (IndexError), "<a@[t\ufffd]>" (AttributeError), "@[ " (UnboundLocalError, a NameError), found by
            # tests/fuzz. A path it cannot parse is a syntax error (501), not an internal error (451).
            return None, None
        if address and stripped.startswith("<"):
            inner = stripped[1:].split(">", 1)[0]
            if inner != address:
                address = inner
        return address, rest

    async def smtp_MAIL(self, arg: str | None) -> None:
        # RFC 4954 5: a server offering AUTH must accept MAIL's AUTH= parameter;
        # aiosmtpd refuses every parameter but BODY, SIZE and SMTPUTF8. It is
        # only informational (who submitted it upstream), so it is dropped.
        if arg and self.listener in SUBMISSION:
            arg = _AUTH_PARAM.sub("", arg)
        await super().smtp_MAIL(arg)

    # --- STARTTLS ---------------------------------------------------------------------------

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.psession is not None and self.psession.tls:
            await self.reply(TLS_ALREADY.verdict())
            return
        if not self.tls_context:
            await self.reply(TLS_NOT_AVAILABLE.verdict())
            return
        member = self.psession.member if self.psession else None
        # A fleet's boxes are known by their client certificates' pins (fleet.boxes.*.spki_sha256,
        # docs/fleet.md "Home boxes"): with a fleet, every port-25 client is asked for one.
        fleet = self.listener == "mx" and bool(self.app.fleet_box_pins)
        if (member is not None and member.pins()) or fleet:
            # Ask this member for its client certificate (any certificate is accepted
            # in the handshake; its pin is checked before MAIL). Others are not asked.
            self.tls_context = self.app.tls_client_cert  # type: ignore[assignment]
        await super().smtp_STARTTLS(arg)

    # --- AUTH (RFC 4954), PLAIN (RFC 4616) and LOGIN only, only over TLS ---------------------

    async def smtp_AUTH(self, arg: str) -> None:
        ps = self.psession
        assert ps is not None
        if self.listener not in SUBMISSION:
            await self.reply(AUTH_NOT_OFFERED.verdict())
            return
        if await self.check_helo_needed("EHLO"):
            return
        if not ps.tls:
            await self.reply(STARTTLS_FIRST.verdict("auth"))
            return
        if ps.login is not None:
            await self.reply(AUTH_ALREADY.verdict())
            return
        args = (arg or "").split()
        if not args or len(args) > 2:
            await self.reply(AUTH_SYNTAX.verdict())
            return
        mechanism = args[0].upper()
        if mechanism not in ("PLAIN", "LOGIN"):
            await self.reply(AUTH_BAD_MECH.verdict())
            return
        verdict = self.app.pipeline.auth_check(ps)
        if verdict is not None:
            await self.reply(verdict)
            return
        creds = await (self._auth_plain(args) if mechanism == "PLAIN" else self._auth_login(args))
        if creds is None:
            return  # a reply was given already
        login, password = creds
        # Now the account is known: its own failure allowance (appliance/ratelimit/limiter.py),
        # before any password work. 454 4.7.0, temporary (RFC 4954 6).
        verdict = self.app.pipeline.auth_check(ps, login)
        if verdict is not None:
            metrics.AUTH.labels("refused").inc()
            await self.reply(verdict)
            return
        try:
            account = await self.app.authenticate(login, password)
        except AccountsUnavailable as exc:  # shared accounts database down: temporary, not a failed login
            log.warning("AUTH unavailable ip=%s login=%r: %s", ps.client_ip, login[:100], exc)
            metrics.AUTH.labels("unavailable").inc()
            await self.reply(AUTH_UNAVAILABLE.verdict())
            return
        ok = account is not None
        metrics.AUTH.labels("ok" if ok else "failed").inc()
        verdict = self.app.pipeline.auth(ps, login, ok)
        if verdict is not None:
            await self.reply(verdict)
            return
        if account is None:
            log.info("AUTH failed ip=%s login=%r", ps.client_ip, login[:100])
            await self.reply(AUTH_FAILED.verdict())
            return
        ps.login = account.address
        ps.account = account
        assert self.session is not None
        self.session.authenticated = True
        log.info("AUTH ok ip=%s login=%s", ps.client_ip, account.address)
        await self.reply(AUTH_OK.verdict())

    async def _b64(self, value: str | None, challenge: bytes) -> bytes | None:
        if value is None:
            got = await self.challenge_auth(challenge)
            if got is MISSING:
                return None  # challenge_auth answered 501 already
            return got  # type: ignore[return-value]
        if value == "=":
            return b""
        try:
            return b64decode(value.encode(), validate=True)
        except (binascii.Error, ValueError):
            await self.reply(AUTH_SYNTAX.verdict())
            return None

    async def _auth_plain(self, args: list[str]) -> tuple[str, str] | None:
        blob = await self._b64(args[1] if len(args) == 2 else None, b"")
        if blob is None:
            return None
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await self.reply(AUTH_SYNTAX.verdict())
            return None
        try:
            authz, login, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            await self.reply(AUTH_SYNTAX.verdict())
            return None
        if authz and authz != login:
            # Acting as someone else (RFC 4616 authzid) is not offered.
            await self.reply(AUTH_FAILED.verdict())
            return None
        return login, password

    async def _auth_login(self, args: list[str]) -> tuple[str, str] | None:
        user = await self._b64(args[1] if len(args) == 2 else None, b"Username:")
        if user is None:
            return None
        password = await self._b64(None, b"Password:")
        if password is None:
            return None
        try:
            return user.decode("utf-8"), password.decode("utf-8")
        except UnicodeDecodeError:
            await self.reply(AUTH_ABORTED.verdict())
            return None

    # --- DATA -------------------------------------------------------------------------------

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.reply(NEED_RCPT.verdict())
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            verdict = await self.app.handler.receiver.receive(self)
        except ConnectionError:
            raise
        except Exception:
            log.exception("DATA failed ip=%s", self.psession.client_ip if self.psession else "?")
            metrics.INTERNAL_ERRORS.labels("data").inc()
            verdict = self.data_refused(INTERNAL_ERROR.verdict())
        metrics.DATA_LATENCY.observe(time.monotonic() - self._data_ended)
        self._set_post_data_state()
        if verdict.code == 250:
            faults.point("before_reply")  # crash-safety tests: the message is stored, the client not told
        await self.reply(verdict)

    def data_refused(self, verdict: Verdict) -> Verdict:
        """Count and log a DATA refusal made outside the policy pipeline (the pipeline counts its own)."""
        ps = self.psession
        assert ps is not None
        metrics.VERDICTS.labels(self.listener, "data", verdict.origin, str(verdict.code)).inc()
        log.info("%s data ip=%s login=%s member=%s: %s (%s)", self.listener, ps.client_ip, ps.login,
                 ps.member_id, verdict.reply(), verdict.origin)
        return verdict

    def start_data(self) -> None:
        self._decoder = DataDecoder()
        self._data_ended = time.monotonic()

    async def read_data(self) -> bytes | None:
        """The next decoded DATA bytes, None once ``<CRLF>.<CRLF>`` was read (RFC 5321 4.1.1.4).

        Bytes after the terminator (pipelined commands) are put back for the command loop.
        """
        dec = self._decoder
        assert dec is not None
        if dec.done:
            return None
        chunk = await self._reader.read(DATA_BLOCK)
        if not chunk:
            raise ConnectionResetError("connection closed during DATA")
        self._reset_timeout()
        out = dec.feed(chunk)
        if dec.done:
            self._data_ended = time.monotonic()
            if dec.rest:
                self._reader._buffer[:0] = dec.rest  # type: ignore[attr-defined]
        return out

    @property
    def bare_newline(self) -> bool:
        return self._decoder is not None and self._decoder.bare_newline

    async def drain_data(self) -> None:
        """Read and drop the rest of the data (a reply before its end would be read as data)."""
        while self._decoder is not None and await self.read_data() is not None:
            pass


# Keep aiosmtpd's HELP texts for the commands overridden above.
for _name in ("smtp_MAIL", "smtp_STARTTLS", "smtp_AUTH", "smtp_DATA"):
    getattr(RelaySMTP, _name).__dict__.update(getattr(SMTP, _name).__dict__)


class RelayHandler:
    """aiosmtpd hooks: each asks the policy pipeline, and stores accepted mail in the spool."""

    def __init__(self, app: RelayApp) -> None:
        self.app = app
        self.receiver = Receiver(app)

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default is "500 Error: ..." - a permanent failure for what is
        # our bug or a transient fault. Never 5xx for that (DESIGN.md).
        if isinstance(error, TLSSetupException):
            # A client whose TLS handshake failed (e.g. a client certificate we cannot
            # verify): aiosmtpd closes the connection; not our fault, no traceback.
            log.warning("TLS handshake failed: %s", error.__cause__ or error)
            metrics.TLS_FAILURES.inc()
            return INTERNAL_ERROR.reply()  # not sent: aiosmtpd closes the connection instead
        if isinstance(error, ConnectionError):
            log.info("connection error: %s", error)
            return INTERNAL_ERROR.reply()
        if isinstance(error, AccountsUnavailable):  # shared accounts database down: 451, no traceback
            log.warning("SMTP session: %s", error)
            return INTERNAL_ERROR.reply()
        log.error("SMTP session exception", exc_info=error)
        metrics.INTERNAL_ERRORS.labels("session").inc()
        return INTERNAL_ERROR.reply()

    async def handle_EHLO(self, server: RelaySMTP, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        assert server.psession is not None
        ps = server.psession
        ps.helo = hostname
        lines = [server.hostname, "PIPELINING", f"SIZE {server.data_size_limit}", "8BITMIME", "SMTPUTF8",
                 "ENHANCEDSTATUSCODES"]
        if server.tls_context and not ps.tls:
            lines.append("STARTTLS")
        if server.listener in SUBMISSION and ps.tls and ps.login is None:
            lines.append("AUTH PLAIN LOGIN")
        if server.listener == "internal":
            lines += ["XUSER", "XAUTHCHECK", "XAUTHFAIL", "XAUTHOK"]
        return [f"250-{x}" for x in lines[:-1]] + [f"250 {lines[-1]}"]

    async def handle_HELO(self, server: RelaySMTP, session: Any, envelope: Any, hostname: str) -> str:
        session.host_name = hostname
        assert server.psession is not None
        server.psession.helo = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(self, server: RelaySMTP, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        ps = server.psession
        assert ps is not None
        # (aiosmtpd has refused a SIZE= over the limit already, RFC 1870.)
        sender = "" if address == "<>" else address
        if ps.login is not None:
            # Fresh for every message (a disable or hold applies at once), read off the event loop.
            ps.account = await self.app.read_accounts(self.app.accounts.get, ps.login)
        await self.app.pipeline.prepare_mail(ps, sender)  # outsiders' DNS lookups (DNSBL), off the event loop
        verdict = self.app.pipeline.mail(ps, sender)
        if verdict is not None:
            if verdict.close:
                server._close_after_reply = True
            return verdict.reply()
        normalized = normalize_address(sender) if sender else ""
        envelope.mail_from = normalized or "<>"
        envelope.mail_options.extend(mail_options)
        ps.sender = normalized
        return SENDER_OK.reply()

    def _recipient(self, address: str) -> tuple[str | None, Any]:
        """The owner of ADDRESS and the owner's account (the quota check reads it); blocking."""
        owner = self.app.accounts.owner_of(address)
        return owner, (self.app.accounts.get(owner) if owner else None)

    async def handle_RCPT(self, server: RelaySMTP, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        ps = server.psession
        assert ps is not None
        try:
            # Off the event loop (the accounts may be a network away, docs/fleet.md), both reads in one
            # hand-off: each hand-off waits for a thread and for the GIL (docs/benchmarks.md, relay profile).
            ps.recipient_owner, ps.recipient_account = await self.app.read_accounts(
                self._recipient, normalize_address(address))
        except AddressError:
            ps.recipient_owner, ps.recipient_account = None, None  # address_syntax refuses it
        await self.app.pipeline.prepare_rcpt(ps, address)  # the recipient's mailbox usage (quota), off the loop
        verdict = self.app.pipeline.rcpt(ps, address)
        if verdict is not None:
            if verdict.close:
                server._close_after_reply = True
            return verdict.reply()
        try:
            normalized = normalize_address(address)
        except AddressError:  # pragma: no cover - address_syntax refused it already
            return INTERNAL_ERROR.reply()
        envelope.rcpt_tos.append(normalized)
        envelope.rcpt_options.extend(rcpt_options)
        ps.recipients.append(normalized)
        return RECIPIENT_OK.reply()
