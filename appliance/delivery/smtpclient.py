"""One SMTP transaction to the next hop (blocking smtplib; run in a worker thread).

TLS policies:
- ``required`` (member relays, upstream): no STARTTLS or a failed handshake is a
  temporary failure for that host; never falls back to plaintext. With SPKI pins
  the peer key must match one (the registry's pin, hex SHA-256 of the DER
  SubjectPublicKeyInfo); without pins the chain is verified against ``ca_file``
  (or the system CAs) and the host name is checked.
- ``opportunistic`` (DNS MX in the transition): STARTTLS when offered, unverified.
- a DNS MX hop under DANE or MTA-STS (``Hop.tls``, appliance/tlspolicy/hoptls.py): STARTTLS
  mandatory, the peer's chain checked after the handshake and before anything else is sent.

Connections are cached per (host, port, policy) for a few seconds and reused
after RSET, so a burst of mail to one member costs one TLS handshake.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from appliance.delivery.outcome import Outcome, deferred, failed
from appliance.delivery.routing import Hop
from appliance.tlsfiles import spki_sha256

TlsMode = Literal["required", "opportunistic"]
IDLE_SECONDS = 5.0
TIMEOUT = 60.0


@dataclass(frozen=True)
class TlsPolicy:
    mode: TlsMode
    ca_file: str = ""
    # Presented to members: a member that lists SPKI pins for us requires our
    # certificate before MAIL (DESIGN.md "Who may send what").
    client_cert: str = ""
    client_key: str = ""


@dataclass(frozen=True)
class Auth:
    username: str
    password: str


class HopError(Exception):
    """This host could not take the transaction; try the next one."""

    def __init__(self, code: int, enhanced: str, text: str, permanent: bool = False) -> None:
        super().__init__(text)
        self.code, self.enhanced, self.text, self.permanent = code, enhanced, text, permanent


def _context(policy: TlsPolicy, pins: Sequence[str]) -> ssl.SSLContext:
    if policy.mode == "opportunistic" or pins:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # pins (checked after the handshake) or nothing at all
    else:
        ctx = ssl.create_default_context(cafile=policy.ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if policy.client_cert:
        ctx.load_cert_chain(policy.client_cert, policy.client_key or None)
    return ctx


class _Pool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[tuple[object, ...], list[tuple[smtplib.SMTP, float]]] = {}

    def get(self, key: tuple[object, ...]) -> smtplib.SMTP | None:
        now = time.monotonic()
        while True:
            with self._lock:
                conns = self._idle.get(key)
                if not conns:
                    return None
                conn, since = conns.pop()
            if now - since > IDLE_SECONDS:
                _close(conn)
                continue
            try:
                if conn.rset()[0] == 250:
                    return conn
            except (smtplib.SMTPException, OSError):
                pass
            _close(conn)

    def put(self, key: tuple[object, ...], conn: smtplib.SMTP) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append((conn, time.monotonic()))

    def reap(self) -> None:
        now = time.monotonic()
        stale: list[smtplib.SMTP] = []
        with self._lock:
            for key, conns in list(self._idle.items()):
                keep = [(c, t) for c, t in conns if now - t <= IDLE_SECONDS]
                stale += [c for c, t in conns if now - t > IDLE_SECONDS]
                self._idle[key] = keep
        for c in stale:
            _close(c)

    def close_all(self) -> None:
        with self._lock:
            conns = [c for cs in self._idle.values() for c, _ in cs]
            self._idle.clear()
        for c in conns:
            _close(c)


POOL = _Pool()


def _close(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (smtplib.SMTPException, OSError):
        with contextlib.suppress(OSError):
            conn.close()


def _open(hop: Hop, policy: TlsPolicy, helo: str, auth: Auth | None) -> smtplib.SMTP:
    remote = f"{hop.host}:{hop.port}"
    try:
        conn = smtplib.SMTP(timeout=TIMEOUT)
        code, msg = conn.connect(hop.address or hop.host, hop.port)
        conn._host = hop.host  # TLS server name is the host's name even when we dialled its address
    except (OSError, smtplib.SMTPException) as exc:
        raise HopError(421, "4.4.1", f"cannot connect to {remote}: {exc}") from None
    try:
        if code != 220:
            raise HopError(code, "4.4.2", f"{remote} greeted with {code} {msg.decode(errors='replace')}")
        conn.ehlo(helo)
        if conn.has_extn("starttls"):
            try:
                conn.starttls(context=hop.tls.context() if hop.tls else _context(policy, hop.spki_sha256))
            except (ssl.SSLError, ssl.CertificateError, OSError, smtplib.SMTPException) as exc:
                if hop.tls is not None:
                    hop.tls.handshake_failed(str(exc), hop.address)
                raise HopError(421, "4.7.5", f"TLS with {remote} failed: {exc}") from None
            # DANE / MTA-STS (appliance/tlspolicy/hoptls.py): checked before anything else is sent.
            if hop.tls is not None and (why := hop.tls.verify(conn.sock, hop.address)):
                raise HopError(421, "4.7.5", f"{remote}: {why}")
            if hop.spki_sha256:
                assert isinstance(conn.sock, ssl.SSLSocket)
                der = conn.sock.getpeercert(binary_form=True)
                if der is None or spki_sha256(der) not in hop.spki_sha256:
                    raise HopError(421, "4.7.5", f"{remote} presented a key that matches none of its registry pins")
            conn.ehlo(helo)
        elif policy.mode == "required":
            raise HopError(421, "4.7.4", f"{remote} does not offer STARTTLS and TLS is required")
        elif hop.tls is not None and (why := hop.tls.no_starttls(hop.address)):
            raise HopError(421, "4.7.4", f"{remote}: {why}; never sent in plaintext")
        if auth is not None:
            try:
                conn.login(auth.username, auth.password)
            except smtplib.SMTPAuthenticationError as exc:
                raise HopError(exc.smtp_code, "4.7.8", f"{remote} refused our AUTH: {exc.smtp_error!r}") from None
        return conn
    except HopError:
        _close(conn)
        raise
    except (OSError, smtplib.SMTPException) as exc:
        _close(conn)
        raise HopError(421, "4.4.2", f"{remote}: {exc}") from None


def _enhanced(code: int, text: str, default_class: str) -> tuple[str, str]:
    first = text.split(" ", 1)
    if first and first[0].count(".") == 2 and first[0][0] in "245":
        return first[0], text
    return f"{'5' if code >= 500 else '4'}.{default_class}", text


def send(
    hops: Sequence[Hop],
    sender: str,
    recipients: Sequence[str],
    data: bytes,
    *,
    policy: TlsPolicy,
    helo: str,
    auth: Auth | None = None,
) -> list[Outcome]:
    """Try HOPS in order until one takes the transaction; an outcome for every recipient."""
    last = HopError(421, "4.4.1", "no hosts to try")
    for hop in hops:
        key = (hop.host, hop.port, hop.spki_sha256, hop.tls, policy, auth)
        conn = POOL.get(key)
        try:
            if conn is not None:
                try:
                    outcomes, reusable = _transaction(conn, hop, sender, recipients, data)
                except HopError:
                    conn = None  # the cached connection went stale: one fresh try on the same host
            if conn is None:
                conn = _open(hop, policy, helo, auth)
                outcomes, reusable = _transaction(conn, hop, sender, recipients, data)
        except HopError as exc:
            last = exc
            continue
        if reusable:
            POOL.put(key, conn)
        else:
            _close(conn)
        return outcomes
    return deferred(list(recipients), last.code, last.enhanced, last.text)


def _transaction(conn: smtplib.SMTP, hop: Hop, sender: str, recipients: Sequence[str],
                 data: bytes) -> tuple[list[Outcome], bool]:
    remote = f"dns; {hop.host}"
    opts: list[str] = []
    if not data.isascii() and conn.has_extn("8bitmime"):
        opts.append("BODY=8BITMIME")
    if (not sender.isascii() or not all(r.isascii() for r in recipients)) and conn.has_extn("smtputf8"):
        opts.append("SMTPUTF8")
    try:
        code, resp = conn.mail(sender, opts)
        text = resp.decode(errors="replace")
        if code != 250:
            enh, text = _enhanced(code, text, "0.0")
            if code >= 500:
                return failed(list(recipients), code, enh, f"MAIL FROM: {code} {text}", remote), True
            return deferred(list(recipients), code, enh, f"MAIL FROM: {code} {text}", remote), code not in (421,)
        accepted: list[str] = []
        out: list[Outcome] = []
        for r in recipients:
            code, resp = conn.rcpt(r)
            text = resp.decode(errors="replace")
            if code in (250, 251):
                accepted.append(r)
                continue
            enh, text = _enhanced(code, text, "1.0")
            kind = failed if code >= 500 else deferred
            out += kind([r], code, enh, f"RCPT TO: {code} {text}", remote)
            if code == 421:
                raise smtplib.SMTPServerDisconnected(text)
        if not accepted:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                conn.rset()
            return out, True
        try:
            code, resp = conn.data(data)
        except smtplib.SMTPDataError as exc:
            code, resp = exc.smtp_code, exc.smtp_error
        text = resp.decode(errors="replace") if isinstance(resp, bytes) else str(resp)
        if code == 250:
            out += [Outcome(r, "delivered", code, "2.0.0", f"{code} {text}", remote) for r in accepted]
        else:
            enh, text = _enhanced(code, text, "0.0")
            kind = failed if code >= 500 else deferred
            out += kind(accepted, code, enh, f"DATA: {code} {text}", remote)
        return out, code != 421
    except (TimeoutError, smtplib.SMTPServerDisconnected, OSError) as exc:
        # Lost mid-transaction: nothing is known to be delivered; retry later (a duplicate beats a loss).
        raise HopError(421, "4.4.2", f"connection to {hop.host}:{hop.port} lost: {exc}") from None
