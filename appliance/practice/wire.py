"""A small SMTP client for probes: raw bytes out, every reply kept verbatim as evidence.

smtplib is not used because probes must send what a well-behaved client never
does (bare LF around the end-of-data dot, commands pipelined behind STARTTLS)
and must see the exact reply lines, including multi-line ones. Every read has a
timeout and every reply a size cap, so a hostile or stuck server cannot hold a
probe forever.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

MAX_REPLY_LINES = 100
MAX_LINE = 4096


class WireError(Exception):
    """The connection failed or the server broke the protocol; the message is the evidence."""


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The reply as the server sent it (continuation lines joined with ' / ')."""
        return " / ".join(self.lines)

    @property
    def last(self) -> str:
        return self.lines[-1] if self.lines else ""

    def keywords(self) -> set[str]:
        """EHLO keywords (RFC 5321 4.1.1.1), upper-cased, from every line but the first."""
        out = set()
        for line in self.lines[1:]:
            word = line[4:].split(" ", 1)[0].upper()
            if word:
                out.add(word)
        return out


class Wire:
    def __init__(self, host: str, port: int, timeout: float = 10.0, source: str | None = None) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        try:
            self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
                (host, port), timeout=timeout, source_address=(source, 0) if source else None)
        except OSError as exc:
            raise WireError(f"cannot connect to {host}:{port}: {exc}") from None
        self._buf = b""

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise WireError(f"send failed: {exc}") from None

    def _line(self, timeout: float | None) -> str:
        self.sock.settimeout(timeout if timeout is not None else self.timeout)
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_LINE:
                raise WireError(f"reply line longer than {MAX_LINE} bytes")
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                raise
            except OSError as exc:
                raise WireError(f"connection lost: {exc}") from None
            if not chunk:
                raise WireError("connection closed by the server" + (f" after {self._buf!r}" if self._buf else ""))
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def reply(self, timeout: float | None = None) -> Reply:
        """One (possibly multi-line) reply; TimeoutError if none arrives within TIMEOUT."""
        lines: list[str] = []
        while len(lines) < MAX_REPLY_LINES:
            line = self._line(timeout)
            if len(line) < 3 or not line[:3].isdigit():
                raise WireError(f"not an SMTP reply: {line!r}")
            lines.append(line)
            if len(line) == 3 or line[3] != "-":
                return Reply(int(line[:3]), tuple(lines))
        raise WireError(f"reply of more than {MAX_REPLY_LINES} lines")

    def cmd(self, line: str) -> Reply:
        self.send(line.encode("utf-8") + b"\r\n")
        try:
            return self.reply()
        except TimeoutError:
            raise WireError(f"no reply to {line.split(' ', 1)[0]} within {self.timeout} s") from None

    def greeting(self) -> Reply:
        try:
            return self.reply()
        except TimeoutError:
            raise WireError(f"no greeting within {self.timeout} s") from None

    def pending(self, wait: float) -> Reply | None:
        """A reply that arrives within WAIT seconds without our asking, or None."""
        try:
            return self.reply(timeout=wait)
        except TimeoutError:
            return None

    def starttls(self) -> ssl.SSLSocket:
        """Upgrade (after a 220 to STARTTLS). Certificates are not verified here: the probe
        judges the certificate itself (dates, registry pin) and reports what it saw."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        # RFC 3207 4.2: forget everything received before TLS; a server that answers it is injectable.
        self._buf = b""
        try:
            self.sock = ctx.wrap_socket(self.sock, server_hostname=self.host)
        except (OSError, ssl.SSLError) as exc:
            raise WireError(f"TLS handshake failed: {exc}") from None
        return self.sock
