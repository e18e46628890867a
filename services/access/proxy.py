"""IMAP and POP3 login proxy to an account's home box (issue 16 item 5, docs/fleet.md "Home boxes").

Modelled on Dovecot's proxy (passdb ``proxy=y host=...``): this box authenticates the login
itself (the accounts are shared in PostgreSQL), takes the account's connection-cap slot, then
opens implicit TLS to the home box's IMAPS listener (`fleet.boxes.NAME.access`), verifying its
certificate against `fleet.ca_file` and the name `tls_name` (or the host), logs in there with the
same credentials (AUTHENTICATE PLAIN with SASL-IR, RFC 4959, so no quoting of the password), and
answers the client's LOGIN with the home box's tagged OK (its CAPABILITY code: from then on the
client talks to the home box). After that the bytes are relayed both ways unchanged, with flow
control coupled (each side's transport is the other's producer), until either side closes.

A home box that cannot be reached, does not greet, fails TLS verification or does not answer
within `fleet.connect_timeout` gives ``NO [UNAVAILABLE]`` (RFC 5530 3), never a wrong-password
answer; a NO from the home box is passed on as it is. Input the home box sends before its
login answer is capped (MAX_PRELOGIN).

POP3 the same way (`fleet.boxes.NAME.pop3`, the home box's POP3S listener): AUTH PLAIN with the
initial response (RFC 5034 4), the home box's ``+OK`` answers the client's PASS or AUTH, then the
bytes are relayed. Without `pop3` for the home box, POP3 logins of its accounts are refused.

IMAP passes the client's address on as Dovecot's proxy does: before AUTHENTICATE it sends
``ID ("x-originating-ip" IP "x-originating-port" PORT)`` and waits for the tagged answer; the home
box believes it from the fleet's boxes only (services/access/imap/cmd_auth.py), so its per-IP and
per-user+IP caps, its login limiter and its log see the customer, not this box. A home box that
answers the ID with NO or BAD (an older box) is still logged into; that is logged here.

POP3 the same with Dovecot's ``XCLIENT ADDR=IP PORT=PORT`` before AUTH (the home box:
services/access/pop3/xclient.py); an ``-ERR`` to it is logged and the login goes on.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import Counter
from twisted.internet import defer, endpoints, reactor, ssl
from twisted.internet.protocol import Protocol
from twisted.python import log

from appliance.fleet_config import FleetConfig

TAG = b"P1"
ID_TAG = b"P0"
MAX_PRELOGIN = 64 * 1024  # greeting, untagged lines and the login answer from the home box
PROXIED = Counter("access_home_proxy_total",
                  "IMAP logins proxied to the account's home box, by result (ok, refused, unavailable)",
                  ["protocol", "result"])
_TAGGED = re.compile(rb"^P1 (OK|NO|BAD)(?: \[([^\]]*)\])? ?(.*)$")
_ID_TAGGED = re.compile(rb"^P0 (OK|NO|BAD)\b ?(.*)$")


class HomeUnavailable(Exception):
    """The home box cannot take the login now (the text is for the log, not the client)."""


class HomeRefused(Exception):
    """The home box answered the login with NO: CODE and TEXT are passed on to the client."""

    def __init__(self, code: str | None, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


def _trust(ca_file: str) -> Any:
    pem = Path(ca_file).read_bytes()
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.S)
    if not blocks:
        raise HomeUnavailable(f"fleet.ca_file {ca_file}: no certificate in it")
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(b) for b in blocks])


class HomeConnection(Protocol):
    """The client side towards the home box: log in, then relay to FRONT (the client's IMAPConnection
    or POP3Server)."""

    def __init__(self, user: str, password: str, protocol: str = "imap",
                 origin: tuple[str, int] | None = None) -> None:
        self.protocol = protocol
        # Dovecot's proxy ID (RFC 2971): the client's address and port, believed by the home box
        # because this box is one of the fleet's (services/access/imap/cmd_auth.py).
        # POP3: Dovecot's XCLIENT (services/access/pop3/xclient.py at the home box).
        ip = origin[0].encode("ascii", "replace") if origin else b""
        if not origin:
            self.id_command = b""
        elif protocol == "imap":
            self.id_command = ID_TAG + b' ID ("x-originating-ip" "%s" "x-originating-port" "%d")\r\n' % (ip, origin[1])
        else:
            self.id_command = b"XCLIENT ADDR=%s PORT=%d\r\n" % (ip, origin[1])
        self._id_pending = False
        plain = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
        # SASL PLAIN with the initial response: IMAP SASL-IR (RFC 4959), POP3 AUTH (RFC 5034 4).
        self.login = (TAG + b" AUTHENTICATE PLAIN " if protocol == "imap" else b"AUTH PLAIN ") + plain + b"\r\n"
        self.ready: defer.Deferred[tuple[bytes, bytes]] = defer.Deferred()  # (tagged OK line, bytes after it)
        self.front: Any = None
        self._buf = b""
        self._greeted = False

    def dataReceived(self, data: bytes) -> None:
        if self.front is not None:
            self.front.resetTimeout()
            self.front.transport.write(data)
            return
        if self.ready.called:
            return
        self._buf += data
        if len(self._buf) > MAX_PRELOGIN:
            self._fail(HomeUnavailable("home box sent too much before its login answer"))
            return
        while b"\r\n" in self._buf and not self.ready.called:
            line, self._buf = self._buf.split(b"\r\n", 1)
            if self.protocol == "pop3":
                self._pop3_line(line)
                continue
            if not self._greeted:
                if not line.startswith(b"* OK"):
                    self._fail(HomeUnavailable(f"home box greeting: {line[:200]!r}"))
                    return
                self._greeted = True
                self._id_pending = bool(self.id_command)
                self.transport.write(self.id_command or self.login)  # type: ignore[union-attr]
                continue
            if self._id_pending:
                idm = _ID_TAGGED.match(line)
                if idm is None:
                    continue  # the home box's untagged ID answer
                self._id_pending = False
                if idm.group(1) != b"OK":  # an older home box: it sees this box's address
                    log.msg(f"home box answered the proxy ID {idm.group(1).decode()}: "
                            f"{idm.group(2)[:200].decode('utf-8', 'replace')}; it sees this box's address")
                self.transport.write(self.login)  # type: ignore[union-attr]
                continue
            m = _TAGGED.match(line)
            if m is None:
                continue  # untagged data before the answer: dropped (the OK's CAPABILITY code is what the client needs)
            status, code, text = m.group(1), m.group(2), m.group(3).decode("utf-8", "replace")
            if status == b"OK":
                rest, self._buf = self._buf, b""
                self.ready.callback((line, rest))
            elif status == b"NO":
                self._fail(HomeRefused(code.decode("utf-8", "replace") if code else None, text))
            else:
                self._fail(HomeUnavailable(f"home box answered the login BAD: {text[:200]}"))

    def _pop3_line(self, line: bytes) -> None:
        if not self._greeted:
            if not line.startswith(b"+OK"):
                self._fail(HomeUnavailable(f"home box greeting: {line[:200]!r}"))
                return
            self._greeted = True
            self._id_pending = bool(self.id_command)
            self.transport.write(self.id_command or self.login)  # type: ignore[union-attr]
        elif self._id_pending:
            self._id_pending = False
            if not line.startswith(b"+OK"):  # an older home box: it sees this box's address
                log.msg(f"home box answered the proxy XCLIENT {line[:200]!r}; it sees this box's address")
            self.transport.write(self.login)  # type: ignore[union-attr]
        elif line.startswith(b"+OK"):
            rest, self._buf = self._buf, b""
            self.ready.callback((line, rest))
        elif line.startswith(b"-ERR"):
            self._fail(HomeRefused(None, line[4:].decode("utf-8", "replace").strip()))
        else:
            self._fail(HomeUnavailable(f"home box answered the login with {line[:200]!r}"))

    def _fail(self, exc: Exception) -> None:
        if not self.ready.called:
            self.ready.errback(exc)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        if not self.ready.called:
            self.ready.errback(HomeUnavailable(f"home box closed the connection: {reason.getErrorMessage()}"))
        elif self.front is not None:
            front, self.front = self.front, None
            _close(front.transport)


async def connect_home(fleet: FleetConfig, home: str, user: str, password: str,
                       protocol: str = "imap", origin: tuple[str, int] | None = None,
                       ) -> tuple[HomeConnection, bytes, bytes]:
    """Log in to HOME's access service (its IMAPS or POP3S listener) as USER; (the connection, its
    OK line, bytes after it). HomeUnavailable or HomeRefused otherwise. ORIGIN: the client's
    (address, port), sent first in an IMAP ID or a POP3 XCLIENT."""
    box = fleet.boxes.get(home)
    if box is None:
        raise HomeUnavailable(f"home box {home!r} is not in fleet.boxes")
    hop = box.access_hop() if protocol == "imap" else box.pop3_hop()
    if hop is None:
        raise HomeUnavailable(f"fleet.boxes.{home}.pop3 is not set")
    host, port = hop
    try:
        opts = ssl.optionsForClientTLS(box.name_for(host), trustRoot=_trust(fleet.ca_file))
    except OSError as exc:
        raise HomeUnavailable(f"fleet.ca_file {fleet.ca_file}: {exc.strerror or exc}") from None
    ep = endpoints.wrapClientTLS(opts, endpoints.HostnameEndpoint(reactor, host, port, timeout=fleet.connect_timeout))
    proto = HomeConnection(user, password, protocol, origin)
    try:
        conn_d = endpoints.connectProtocol(ep, proto)
        conn_d.addTimeout(fleet.connect_timeout, reactor)
        await conn_d
        proto.ready.addTimeout(fleet.connect_timeout, reactor)
        line, rest = await proto.ready
    except (HomeRefused, HomeUnavailable):
        raise
    except Exception as exc:  # refused, unreachable, timed out, TLS verification failed
        if proto.transport is not None:
            proto.transport.loseConnection()
        raise HomeUnavailable(f"home box {home} at {host}:{port}: {exc or type(exc).__name__}") from None
    return proto, line, rest


def splice(front: Any, home: HomeConnection, pending: bytes) -> None:
    """Relay bytes between the client's IMAPConnection FRONT and HOME from now on; PENDING is what the
    client pipelined after its LOGIN (it belongs to the home box's session)."""
    home.front = front
    front.proxy = home
    # The front's own output producer gives way (IMAP: the session's; POP3: the server itself).
    getattr(front, "detach_output", front.transport.unregisterProducer)()
    # Coupled flow control: a slow reader on one side pauses the other side's input (as Twisted's portforward).
    front.transport.registerProducer(home.transport, True)
    home.transport.registerProducer(front.transport, True)
    if pending:
        home.transport.write(pending)


def client_gone(home: HomeConnection) -> None:
    """The client closed: close the home box's connection too (its session logs out there)."""
    home.front = None
    if home.transport is not None:
        _close(home.transport)


def _close(transport: Any) -> None:
    # The producer first: Twisted's TLS layer finishes loseConnection only once none is registered.
    transport.unregisterProducer()  # a no-op when none is registered (TLS and TCP transports)
    transport.loseConnection()


async def _login_home(protocol: str, backend: Any, account: Any, home: str, user: str, password: str,
                      client_ip: str, transport: Any, release: Callable[[], None],
                      client_left: Callable[[], bool]) -> tuple[HomeConnection, bytes, bytes] | None:
    """The one upstream path of both proxies: log in to HOME as USER on PROTOCOL, counting and logging
    the result. On HomeRefused or HomeUnavailable (re-raised for the caller's own answer) and when
    the client left meanwhile (None) the cap slot is given back with RELEASE."""
    from services.access.imap import metrics

    origin = (client_ip, int(getattr(transport.getPeer(), "port", 0) or 0))
    try:
        conn, line, rest = await connect_home(backend.cfg.fleet, home, user, password, protocol, origin)
    except HomeRefused as exc:
        release()
        PROXIED.labels(protocol, "refused").inc()
        log.msg(f"{protocol} proxy of {account.address} to home box {home}: refused there: {exc.text[:200]}")
        raise
    except HomeUnavailable as exc:
        release()
        PROXIED.labels(protocol, "unavailable").inc()
        metrics.LOGINS.labels(protocol, "unavailable").inc()
        log.msg(f"{protocol} proxy of {account.address} to home box {home}: {exc}")
        raise
    if client_left():  # the client left while the home box was logging in
        release()
        conn.transport.loseConnection()  # type: ignore[union-attr]
        return None
    PROXIED.labels(protocol, "ok").inc()
    metrics.LOGINS.labels(protocol, "ok").inc()
    return conn, line, rest


async def proxy_pop3(p: Any, account: Any, home: str) -> None:
    """The POP3 server P authenticated ACCOUNT whose home is HOME: take its cap slot here, log in there,
    answer the client with the home box's +OK and hand the connection over; else -ERR."""
    from services.access.conncaps import CapReached

    user, password = p._credentials
    p._credentials = None
    try:
        lease = p.backend.caps.open_user(account, p.client_ip, "pop3")
    except CapReached as exc:
        p.err("[IN-USE] " + exc.text)
        return
    if home not in p.backend.cfg.fleet.boxes or not p.backend.cfg.fleet.boxes[home].pop3:
        lease.release()
        # RFC 3206 4 SYS/PERM: this needs an operator (the home box's POP3 address); never an empty maildrop here.
        p.err("[SYS/PERM] Your mailbox is on another server of this provider and POP3 is not proxied to it: use IMAP")
        return
    try:
        home_login = await _login_home("pop3", p.backend, account, home, user, password, p.client_ip,
                                       p.transport, lease.release, lambda: bool(p._closed))
    except HomeRefused as exc:
        p.err(exc.text or "[AUTH] Authentication failed")
        return
    except HomeUnavailable:
        p.err("[SYS/TEMP] Home mail server temporarily unavailable, try again later")  # RFC 3206 4
        return
    if home_login is None:
        return
    conn, line, rest = home_login
    p._user_lease = lease  # released when the client leaves (POP3Server._release)
    if p._ip_lease is not None:  # logged in: no longer counted as an unauthenticated connection
        p._ip_lease.release()
    p.state = "proxied"
    p.ok(line[3:].decode("utf-8", "replace").strip())
    p.transport.write(rest)
    splice(p, conn, p.take_input())


def _release_cap(s: Any) -> None:
    if s.cap_release is not None:
        release, s.cap_release = s.cap_release, None
        release()


async def proxy_login(s: Any, account: Any, user: str, password: str, tag: str, home: str) -> None:
    """The IMAP session S authenticated ACCOUNT whose home is HOME: answer TAG with the home box's
    answer and, on OK, hand the connection over (S ends here; the home box's session serves it)."""
    from services.access.imap.errors import No

    try:
        home_login = await _login_home("imap", s.backend, account, home, user, password, s.conn.client_ip,
                                       s.conn.transport, lambda: _release_cap(s), lambda: bool(s.closed))
    except HomeRefused as exc:
        raise No(exc.text or "Authentication failed", exc.code) from None
    except HomeUnavailable:
        # RFC 5530 3: UNAVAILABLE, a temporary failure of a subsystem (here: the home box).
        raise No("Home mail server temporarily unavailable, try again later", "UNAVAILABLE") from None
    if home_login is None:
        return None
    conn, line, rest = home_login
    # The client's tag on the home box's answer (with its CAPABILITY code: the client talks to it now).
    s.conn.write(tag.encode() + line[len(TAG):] + b"\r\n" + rest)
    s.closed = True  # this box's session is over; the cap slot is released when the client leaves
    s.conn.authenticated()  # RFC 9051 5.4: the logged-in autologout timer, reset by traffic both ways
    splice(s.conn, conn, s.reader.take_buffered())
    return None
