"""A small line- and literal-aware IMAP client for the conformance tests (raw socket over TLS).

Every read is bounded (socket timeout, and a deadline per response): a server that hangs
makes the test fail within seconds, it never stalls the run. Responses come back as bytes
with literals inline (``{n}\\r\\n`` + data), and can be tokenized with ``parse``.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.access.imapdiff import tokenize

TIMEOUT = 10.0


class Hang(AssertionError):
    """The server did not answer within the deadline (a hang is a failure, RFC 3501 §2.2.2)."""


@dataclass
class Lit:
    """A literal argument: synchronizing, or non-synchronizing ``{n+}`` (RFC 7888), or ``~{n}`` literal8."""

    data: bytes
    plus: bool = False
    eight: bool = False


@dataclass
class Result:
    status: str                      # OK / NO / BAD
    text: bytes                      # the tagged line after the status
    untagged: list[bytes] = field(default_factory=list)

    def code(self) -> str | None:
        m = re.match(rb"\[([^\]]*)\]", self.text)
        return m.group(1).decode() if m else None

    def lines(self, kind: str) -> list[bytes]:
        """Untagged responses whose first word (after ``* `` or ``* n ``) is KIND, e.g. EXISTS, FETCH, SEARCH."""
        kind_b = kind.upper().encode()
        out = []
        for u in self.untagged:
            words = u[2:].split(b" ", 2)
            if words[0].upper() == kind_b or (len(words) > 1 and words[0].isdigit() and words[1].upper() == kind_b):
                out.append(u)
        return out

    def numbers(self, kind: str) -> list[int]:
        """The numbers of ``* n KIND`` responses (EXISTS, EXPUNGE, RECENT, FETCH), in order."""
        return [int(u.split(b" ")[1]) for u in self.lines(kind) if u.split(b" ")[1].isdigit()]


def parse(line: bytes) -> list[Any]:
    return tokenize(line)


class Conn:
    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, timeout: float = TIMEOUT) -> None:
        self.timeout = timeout
        raw = socket.create_connection((host, port), timeout=timeout)
        self.sock: Any = raw
        self.buf = b""
        self.n = 0
        self.inflate: Any = None
        self.deflate: Any = None
        self.greeting = self.read_response()
        r = self.cmd("STARTTLS")
        assert r.status == "OK", r
        self.sock = ctx.wrap_socket(raw, server_hostname=None)
        self.buf = b""

    # ---- bytes ----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.deflate is not None:
            data = self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise Hang(f"no complete response within {self.timeout}s; buffered {self.buf[-300:]!r}")
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise Hang(f"no response within {self.timeout}s; buffered {self.buf[-300:]!r}") from None
        if not chunk:
            raise ConnectionError(f"server closed the connection; buffered {self.buf[-300:]!r}")
        if self.inflate is not None:
            chunk = self.inflate.decompress(chunk)
        self.buf += chunk

    def readline(self, deadline: float | None = None) -> bytes:
        deadline = deadline or time.monotonic() + self.timeout
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_response(self, timeout: float | None = None) -> bytes:
        """One whole response line, its literals inline."""
        deadline = time.monotonic() + (timeout or self.timeout)
        line = self.readline(deadline)
        out = line
        while (m := re.search(rb"~?\{(\d+)\}$", line)) is not None:
            n = int(m.group(1))
            while len(self.buf) < n:
                self._fill(deadline)
            data, self.buf = self.buf[:n], self.buf[n:]
            line = self.readline(deadline)
            out += b"\r\n" + data + line
        return out

    def poll(self, timeout: float = 1.0) -> list[bytes]:
        """Untagged responses that arrive within TIMEOUT (for IDLE), without sending anything."""
        out: list[bytes] = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if b"\r\n" not in self.buf:
                self.sock.settimeout(max(0.05, end - time.monotonic()))
                try:
                    self._fill(time.monotonic() + 60)
                except Hang:
                    break
                finally:
                    self.sock.settimeout(self.timeout)
                continue
            out.append(self.read_response())
        return out

    # ---- commands -------------------------------------------------------------------------

    def tag(self) -> str:
        self.n += 1
        return f"c{self.n}"

    def start(self, *parts: str | bytes | Lit) -> tuple[str, Result | None]:
        """Send a command (text and literal parts); returns its tag, or a Result if refused at a literal."""
        tag = self.tag()
        pending = tag.encode() + b" "
        for p in parts:
            if isinstance(p, Lit):
                pending += b"%s{%d%s}\r\n" % (b"~" if p.eight else b"", len(p.data), b"+" if p.plus else b"")
                self.send(pending)
                if not p.plus:
                    untagged = []
                    while True:
                        r = self.read_response()
                        if r.startswith(b"+"):
                            break
                        if r.startswith(tag.encode() + b" "):
                            return tag, self._result(r, tag, untagged)
                        untagged.append(r)
                pending = p.data
            else:
                pending += p.encode() if isinstance(p, str) else p
        self.send(pending + b"\r\n")
        return tag, None

    @staticmethod
    def _result(line: bytes, tag: str, untagged: list[bytes]) -> Result:
        rest = line[len(tag) + 1:]
        status, _, text = rest.partition(b" ")
        return Result(status.decode().upper(), text, untagged)

    def finish(self, tag: str, timeout: float | None = None) -> Result:
        untagged: list[bytes] = []
        while True:
            r = self.read_response(timeout)
            if r.startswith(tag.encode() + b" "):
                return self._result(r, tag, untagged)
            untagged.append(r)

    def cmd(self, *parts: str | bytes | Lit, timeout: float | None = None) -> Result:
        tag, refused = self.start(*parts)
        return refused if refused is not None else self.finish(tag, timeout)

    def ok(self, *parts: str | bytes | Lit) -> Result:
        r = self.cmd(*parts)
        assert r.status == "OK", (parts, r)
        return r

    def login(self, user: str, password: str) -> Result:
        return self.ok("LOGIN ", _q(user), " ", _q(password))

    def append(self, mailbox: str, msg: bytes, flags: str = "", date: str = "") -> Result:
        parts: list[str | Lit] = [f"APPEND {mailbox} "]
        if flags:
            parts.append(f"({flags}) ")
        if date:
            parts.append(f'"{date}" ')
        parts.append(Lit(msg))
        return self.ok(*parts)

    def idle(self) -> str:
        """Start IDLE (RFC 2177 §3); returns its tag once the server has sent the continuation."""
        tag, _ = self.start("IDLE")
        assert self.read_response().startswith(b"+")
        return tag

    def idle_until(self, arrived: Callable[[bytes], bool], timeout: float = 15) -> list[bytes]:
        """Untagged responses pushed during IDLE, until one is ARRIVED or TIMEOUT s pass (nothing is sent)."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while not any(arrived(x) for x in got) and time.monotonic() < deadline:
            got += self.poll(1.0)
        return got

    def done(self, tag: str, word: bytes = b"DONE") -> Result:
        """End the IDLE of TAG with WORD (RFC 2177 §3); its tagged result."""
        self.send(word + b"\r\n")
        return self.finish(tag)

    def compress(self) -> None:
        """COMPRESS DEFLATE (RFC 4978 §3): raw deflate both ways from the byte after the tagged OK."""
        r = self.ok("COMPRESS DEFLATE")
        assert r.status == "OK"
        self.deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        self.inflate = zlib.decompressobj(-15)
        if self.buf:  # anything after the OK is already compressed
            pending, self.buf = self.buf, b""
            self.buf = self.inflate.decompress(pending)

    def close(self) -> None:
        try:
            self.sock.settimeout(3)
            self.cmd("LOGOUT", timeout=3)
        except (OSError, ConnectionError, AssertionError):
            pass
        self.sock.close()


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
