"""The IMAP connection: a Twisted Protocol between the socket and the ``Session``.

Bytes go straight to the session's ``CommandReader`` (no LineReceiver buffering, so
STARTTLS can drop exactly what was pipelined behind it). This module owns TLS
(implicit and STARTTLS), COMPRESS=DEFLATE (RFC 4978), input backpressure (pausing the
socket when too much pipelined input waits), output flow control (``drain``: a large
FETCH waits for the client to read) and the autologout timers (RFC 9051 §5.4).
"""

from __future__ import annotations

import socket
import zlib
from typing import Any

from twisted.internet import defer, interfaces
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from services.access.imap import metrics
from services.access.imap.session import Session

# RFC 9051 §5.4: an autologout timer of at least 30 minutes once authenticated; before
# login a short one, so unauthenticated connections cannot sit on slots.
PREAUTH_TIMEOUT = 60
AUTH_TIMEOUT = 30 * 60
# Decompressed input handed to the reader per step (RFC 4978 §6: bounds a deflate bomb
# by the reader's own line and command caps).
INFLATE_CHUNK = 256 * 1024
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


@implementer(interfaces.IPushProducer)
class _Output:
    """Registered with the transport while writing big responses: it says when to wait."""

    def __init__(self) -> None:
        self.paused = False
        self.waiters: list[defer.Deferred[None]] = []

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()


class IMAPConnection(Protocol, TimeoutMixin):
    def __init__(self, backend: Any, tls_context: Any, implicit_tls: bool) -> None:
        self.backend = backend
        self.tls_context = tls_context
        self.secure = implicit_tls
        self.compressed = False
        self.client_ip = "unknown"
        self.via = ""  # the fleet box that proxies this client (client_ip is then the one its ID gave)
        self.session: Session | None = None
        self._inflate: Any = None
        self._deflate: Any = None
        self._output = _Output()
        self._producer_registered = False
        self._input_paused = False
        self._release_ip: Any = None
        self._sock: Any = None
        self.proxy: Any = None  # logged in to the account's home box: bytes go there (services/access/proxy.py)

    # --- Twisted ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.client_ip = str(getattr(peer, "host", "unknown"))
        self._sock = _tcp_socket(self.transport)
        if self._sock is not None:
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # many small writes
            except OSError:
                pass
        metrics.CONNECTIONS.labels("imap").inc()
        metrics.SESSIONS.labels("imap").inc()
        self.session = Session(self, self.backend)
        refusal = _admit_ip(self)
        if refusal is not None:
            self.session.bye(refusal, "UNAVAILABLE")
            return
        self.setTimeout(PREAUTH_TIMEOUT)
        self.session.greeting()

    def dataReceived(self, data: bytes) -> None:
        if self.proxy is not None:
            self.resetTimeout()
            self.proxy.transport.write(data)  # proxied to the home box: relayed unchanged
            return
        if self.session is None or self.session.closed:
            return
        self.resetTimeout()
        if self._sock is not None and _QUICKACK is not None:
            # ACK the literal at once: clients write a literal and its CRLF separately and
            # a delayed ACK would hold the CRLF back 40 ms (18 APPENDs/s instead of 100+).
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                pass
        if self._inflate is None:
            self.session.data_received(data)
            return
        try:
            while data and not self.session.closed:
                out = self._inflate.decompress(data, INFLATE_CHUNK)
                data = self._inflate.unconsumed_tail
                if out:
                    self.session.data_received(out)
        except zlib.error:
            self.session.bye("compressed input is corrupt")

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)
        metrics.SESSIONS.labels("imap").dec()
        if self.session is not None:
            self.session.connection_lost()
        if self._release_ip is not None:
            release, self._release_ip = self._release_ip, None
            release()
        self._output.resumeProducing()
        if self.proxy is not None:
            from services.access.proxy import client_gone

            proxy, self.proxy = self.proxy, None
            client_gone(proxy)

    def timeoutConnection(self) -> None:
        if self.session is not None and not self.session.closed:
            self.session.bye("autologout: idle for too long")
        else:
            self.close()

    # --- what the session uses --------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._deflate is not None:
            # RFC 4978 §4: flush at the end of each response so the client sees it now.
            data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self.transport.write(data)  # type: ignore[union-attr]

    def close(self) -> None:
        # The output producer must go first: Twisted's TLS layer (and FileDescriptor) only
        # finishes loseConnection once no producer is registered, so with it left in place
        # the socket stayed open after LOGOUT's OK and clients such as mbsync waited forever.
        if self._producer_registered:
            self._producer_registered = False
            self.transport.unregisterProducer()  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def start_tls(self) -> bool:
        if interfaces.ITLSTransport(self.transport, None) is None:
            return False
        self.transport.startTLS(self.tls_context)  # type: ignore[union-attr]
        self.secure = True
        return True

    def start_compress(self) -> None:
        """RFC 4978 §3: raw DEFLATE (no zlib header) both ways, from the byte after the OK."""
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._inflate = zlib.decompressobj(-15)
        self.compressed = True

    def pause_input(self) -> None:
        if not self._input_paused:
            self._input_paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def resume_input(self) -> None:
        if self._input_paused:
            self._input_paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def authenticated(self) -> None:
        self.setTimeout(AUTH_TIMEOUT)

    def detach_output(self) -> None:
        """Proxying from now on: the session's output producer gives way to the home box's transport."""
        if self._producer_registered:
            self._producer_registered = False
            self.transport.unregisterProducer()  # type: ignore[union-attr]

    def logged_in_ip_release(self) -> None:
        """Logged in: this connection no longer counts against the per-IP cap (conncaps)."""
        if self._release_ip is not None:
            release, self._release_ip = self._release_ip, None
            release()

    def proxied_for(self, ip: str) -> str | None:
        """A trusted fleet box proxies the client at IP (its ID x-originating-ip): from now on this
        connection is the client's, for the per-IP cap (the pre-login slot moves to IP), the login
        limiter, the per-user+IP cap and the log. A refusal text if IP's per-IP cap is full."""
        caps = getattr(self.backend, "caps", None)
        if caps is not None and self._release_ip is not None:
            from services.access.conncaps import CapReached

            try:
                lease = caps.open_ip(ip, "imap")
            except CapReached as exc:
                return exc.text
            release, self._release_ip = self._release_ip, lease.release
            release()
        self.via, self.client_ip = self.client_ip, ip
        return None

    def drain(self) -> defer.Deferred[None]:
        """Fires when the transport can take more output (at once if it can now)."""
        if not self._producer_registered:
            self._producer_registered = True
            self.transport.registerProducer(self._output, True)  # type: ignore[union-attr]
        if not self._output.paused or self.session is None or self.session.closed:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._output.waiters.append(d)
        return d


def _admit_ip(conn: IMAPConnection) -> str | None:
    """The per-IP cap of connections not logged in (services.access.conncaps); a refusal text or None."""
    caps = getattr(conn.backend, "caps", None)
    if caps is None:
        return None
    from services.access.conncaps import CapReached

    try:
        lease = caps.open_ip(conn.client_ip, "imap")
    except CapReached as exc:
        return exc.text
    conn._release_ip = lease.release
    return None


def _tcp_socket(transport: Any) -> Any:
    """The TCP socket under TRANSPORT (under the TLS wrapper for implicit TLS), or None."""
    from twisted.internet import tcp

    t = transport
    for _ in range(3):
        if isinstance(t, tcp.Connection):
            return t.getHandle()
        t = getattr(t, "transport", None)
    return None


class IMAPFactory(Factory):
    noisy = False

    def __init__(self, backend: Any, tls_context: Any, implicit_tls: bool) -> None:
        self.backend = backend
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls

    def buildProtocol(self, addr: Any) -> IMAPConnection:
        p = IMAPConnection(self.backend, self.tls_context, self.implicit_tls)
        p.factory = self
        return p
