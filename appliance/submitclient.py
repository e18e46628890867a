"""Client of the relay's internal submission socket (docs/ARCHITECTURE.md).

The access service never queues mail itself: every IMAP/POP send, and every
IMAP/POP login's limiter check, goes over RUN_DIR/submit.sock as ESMTP with
the XUSER, XAUTHCHECK, XAUTHFAIL and XAUTHOK extensions. Calls are blocking; the
Twisted service runs them in its thread pool.

Reply mapping (ARCHITECTURE.md "The internal submission socket"):
2xx -> OK / +OK; 4xx -> NO [LIMIT] (x.7.x and x.5.3, the limits) or
NO [UNAVAILABLE]; 5xx -> NO [POLICYDENIED] / -ERR. A relay that cannot be
reached is a temporary failure: the caller fails closed.
"""

from __future__ import annotations

import email.utils
import re
import smtplib
import socket
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

from appliance.addresses import AddressError, normalize_address

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\s*")
_QUEUED = re.compile(r"queued as\s+(\S+)", re.IGNORECASE)


@dataclass(frozen=True)
class Reply:
    code: int
    text: str  # without the enhanced status code
    enhanced: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def queue_id(self) -> str:
        m = _QUEUED.search(self.text)
        return m.group(1) if m else ""

    def imap_code(self) -> str:
        """The IMAP response code for a refusal: LIMIT, UNAVAILABLE or POLICYDENIED."""
        if self.ok:
            return ""
        if self.temporary:
            return "LIMIT" if self.limited else "UNAVAILABLE"
        return "POLICYDENIED"

    @property
    def limited(self) -> bool:
        return self.temporary and (self.enhanced.startswith("4.7.") or self.enhanced == "4.5.3")


def _reply(code: int, raw: bytes | str) -> Reply:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = " ".join(text.split())  # multi-line replies become one line
    m = _ENHANCED.match(text)
    enhanced = ""
    if m:
        enhanced = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
        text = text[m.end():]
    return Reply(code, text, enhanced)


UNAVAILABLE = Reply(421, "mail relay unavailable, try again later", "4.3.0")


class _UnixSMTP(smtplib.SMTP):
    def __init__(self, path: str, timeout: float) -> None:
        self._path = path
        super().__init__(timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:  # type: ignore[override]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(self._path)
        return s


class SubmitClient:
    def __init__(self, socket_path: str | Path, timeout: float = 60.0) -> None:
        self.path = str(socket_path)
        self.timeout = timeout

    def _open(self) -> _UnixSMTP:
        conn = _UnixSMTP(self.path, self.timeout)
        code, msg = conn.connect(self.path, 0)
        if code != 220:
            conn.close()
            raise smtplib.SMTPConnectError(code, msg)
        conn.ehlo("access")
        return conn

    def _command(self, *lines: str) -> Reply:
        try:
            conn = self._open()
        except (OSError, smtplib.SMTPException):
            return UNAVAILABLE
        try:
            reply = UNAVAILABLE
            for line in lines:
                reply = _reply(*conn.docmd(line))
                if not reply.ok:
                    break
            return reply
        except (OSError, smtplib.SMTPException):
            return UNAVAILABLE
        finally:
            _quit(conn)

    def auth_check(self, client_ip: str, login: str | None = None, protocol: str = "imap") -> Reply:
        """Ask the shared limiter whether CLIENT_IP may try a login (to LOGIN) now, before verifying."""
        return self._command(f"XAUTHCHECK {client_ip} {protocol.upper()}{_login_param(login)}")

    def auth_fail(self, client_ip: str, login: str | None = None, protocol: str = "imap") -> Reply:
        """Record a failed login (to LOGIN) from CLIENT_IP with the shared limiter."""
        return self._command(f"XAUTHFAIL {client_ip} {protocol.upper()}{_login_param(login)}")

    def auth_ok(self, client_ip: str, login: str, protocol: str = "imap") -> Reply:
        """Record that LOGIN logged in from CLIENT_IP: the address gets the account's lenient limit."""
        return self._command(f"XAUTHOK {client_ip} {protocol.upper()}{_login_param(login)}")

    def submit(self, login: str, client_ip: str, protocol: str, sender: str, recipients: list[str],
               data: bytes) -> Reply:
        """Hand one message to the relay as LOGIN; the reply says queued (2xx) or why not."""
        try:
            conn = self._open()
        except (OSError, smtplib.SMTPException):
            return UNAVAILABLE
        try:
            r = _reply(*conn.docmd(f"XUSER {login} {client_ip} {protocol}"))
            if not r.ok:
                return r
            opts = " SMTPUTF8" if not sender.isascii() else ""
            r = _reply(*conn.docmd(f"MAIL FROM:<{sender}> SIZE={len(data)}{opts}"))
            if not r.ok:
                return r
            accepted = 0
            last_refusal: Reply | None = None
            for rcpt in recipients:
                r = _reply(*conn.docmd(f"RCPT TO:<{rcpt}>"))
                if r.ok:
                    accepted += 1
                else:
                    last_refusal = r
            # All recipients or none: a partial send from IMAP/POP cannot be reported per
            # recipient, so any refused recipient refuses the message.
            if last_refusal is not None or accepted == 0:
                conn.docmd("RSET")
                return last_refusal or Reply(554, "no valid recipients", "5.5.1")
            r = _reply(*conn.docmd("DATA"))
            if r.code != 354:
                return r
            conn.send(_dot_stuff(data) + b".\r\n")
            return _reply(*conn.getreply())
        except (OSError, smtplib.SMTPException):
            return UNAVAILABLE
        finally:
            _quit(conn)


MAX_LOGIN_OCTETS = 320  # longer logins are no address; the limiter bounds its keys the same way


def _login_param(login: str | None) -> str:
    if login is None:
        return ""
    return " LOGIN=" + xtext_encode(login.encode("utf-8", "replace")[:MAX_LOGIN_OCTETS].decode("utf-8", "ignore"))


def xtext_encode(text: str) -> str:
    """RFC 3461 4 xtext: octets outside "!".."~", and "+" and "=", become "+" and two hex digits."""
    return "".join(chr(b) if 33 <= b <= 126 and b not in (0x2B, 0x3D) else f"+{b:02X}" for b in text.encode("utf-8"))
def xtext_decode(text: str) -> str | None:
    """RFC 3461 4 xtext: "+" and two upper-case hex digits stand for one octet. None if malformed."""
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == "+":
            hexpart = text[i + 1:i + 3]
            if len(hexpart) != 2 or any(h not in "0123456789ABCDEF" for h in hexpart):
                return None
            out.append(int(hexpart, 16))
            i += 3
        elif 33 <= ord(c) <= 126 and c != "=":
            out.append(ord(c))
            i += 1
        else:
            return None
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _quit(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (OSError, smtplib.SMTPException):
        conn.close()


def _dot_stuff(data: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency, with CRLF line ends and a final CRLF."""
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


class EnvelopeError(ValueError):
    """The message or options give no usable envelope; the text is safe to show a client."""


def envelope(message: bytes, account: str, sender: str | None, recipients: list[str] | None) -> tuple[str, list[str]]:
    """Envelope (sender, recipients) for relaying MESSAGE.

    Sender: the FROM option or the account's address. Recipients: the RECIPIENT
    options, or else To/Cc/Bcc of the message. The relay removes Bcc: from the
    relayed copy, as for any submission (appliance.message.strip_bcc); the stored
    copy keeps it.
    """
    try:
        env_from = normalize_address(sender) if sender else account
        rcpts = [normalize_address(r) for r in recipients] if recipients else []
    except AddressError as exc:
        raise EnvelopeError(str(exc)) from None
    headers = BytesHeaderParser(policy=compat32).parsebytes(message)
    if not rcpts:
        fields = headers.get_all("To", []) + headers.get_all("Cc", []) + headers.get_all("Bcc", [])
        for _, addr in email.utils.getaddresses([str(f) for f in fields]):
            if addr:
                try:
                    a = normalize_address(addr)
                except AddressError as exc:
                    raise EnvelopeError(f"recipient {addr}: {exc}") from None
                if a not in rcpts:
                    rcpts.append(a)
    if not rcpts:
        raise EnvelopeError("no recipients: the message has no To, Cc or Bcc and none were given")
    return env_from, rcpts
