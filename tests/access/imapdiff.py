"""Run one IMAP command script against two servers and normalize the answers for comparison.

A response is parsed into tokens (atoms, strings, literals, nested lists). What
legitimately differs between implementations is normalized away: the
human-readable text after a status, UIDVALIDITY values, the order of FETCH
items and of flags, \\Recent (session-dependent) and the EXISTS/RECENT pushes
that are informative only.
"""

from __future__ import annotations

import re
import socket
import ssl
from typing import Any

Token = Any


class RawIMAP:
    def __init__(self, host: str, port: int, ctx: ssl.SSLContext) -> None:
        s = socket.create_connection((host, port), timeout=30)
        self.sock: socket.socket = s
        self.buf = b""
        self.n = 0
        self.readline()
        self.command(b"STARTTLS")
        self.sock = ctx.wrap_socket(s)
        self.buf = b""

    def readline(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_response(self) -> bytes:
        """One response, literals included (as {n}\\r\\n + data)."""
        line = self.readline()
        out = line
        while (m := re.search(rb"\{(\d+)\}$", line)) is not None:
            data = self.read_exact(int(m.group(1)))
            line = self.readline()
            out += b"\r\n" + data + line
        return out

    def command(self, cmd: bytes, literal: bytes | None = None) -> tuple[list[bytes], bytes]:
        """Send CMD (with one synchronizing LITERAL appended); return (untagged responses, tagged response)."""
        self.n += 1
        tag = b"t%d" % self.n
        if literal is not None:
            self.sock.sendall(tag + b" " + cmd + b" {%d}\r\n" % len(literal))
            first = self.read_response()
            if first.startswith(tag + b" "):  # refused before the literal was sent
                return [], first[len(tag) + 1 :]
            self.sock.sendall(literal + b"\r\n")
        else:
            self.sock.sendall(tag + b" " + cmd + b"\r\n")
        untagged: list[bytes] = []
        while True:
            r = self.read_response()
            if r.startswith(tag + b" "):
                return untagged, r[len(tag) + 1 :]
            untagged.append(r)

    def close(self) -> None:
        try:
            self.command(b"LOGOUT")
        except (OSError, ConnectionError):
            pass
        self.sock.close()


def tokenize(data: bytes) -> list[Token]:
    """IMAP response tokens: bytes for atoms/strings/literals, lists for parenthesized groups."""
    pos = 0
    stack: list[list[Token]] = [[]]
    n = len(data)
    while pos < n:
        c = data[pos : pos + 1]
        if c in (b" ", b"\r", b"\n"):
            pos += 1
        elif c == b"(":
            stack.append([])
            pos += 1
        elif c == b")":
            done = stack.pop()
            stack[-1].append(done)
            pos += 1
        elif c == b'"':
            end = pos + 1
            val = b""
            while data[end : end + 1] != b'"':
                if data[end : end + 1] == b"\\":
                    end += 1
                val += data[end : end + 1]
                end += 1
            stack[-1].append(val)
            pos = end + 1
        elif c == b"{":
            close = data.index(b"}", pos)
            size = int(data[pos + 1 : close])
            start = close + 3
            stack[-1].append(data[start : start + size])
            pos = start + size
        else:
            m = re.match(rb"[^ ()\r\n\[]+(\[[^\]]*\](<\d+>)?)?", data[pos:])
            assert m is not None
            stack[-1].append(m.group(0))
            pos += len(m.group(0))
    return stack[0]


def _norm_flags(flags: list[Token]) -> list[bytes]:
    return sorted(f for f in flags if f.lower() != b"\\recent")


def _fetch_items(tokens: list[Token]) -> dict[bytes, Token]:
    items: dict[bytes, Token] = {}
    for i in range(0, len(tokens) - 1, 2):
        key = tokens[i].upper() if isinstance(tokens[i], bytes) else tokens[i]
        value = tokens[i + 1]
        if key == b"FLAGS":
            value = _norm_flags(value)
        items[key] = value
    return items


def _code(text: bytes) -> Token:
    """The response code of a status text, with volatile numbers normalized; the human text is dropped."""
    m = re.match(rb"\[([^\]]*)\]", text.strip())
    if not m:
        return None
    parts = m.group(1).split()
    name = parts[0].upper()
    if name in (b"UIDVALIDITY",):
        return [name]
    if name in (b"APPENDUID", b"COPYUID"):
        return [name, *parts[2:]]  # drop the UIDVALIDITY, keep the UIDs
    if name in (b"CAPABILITY", b"PERMANENTFLAGS", b"UNSEEN", b"HIGHESTMODSEQ", b"NONEXISTENT", b"CLOSED"):
        # CAPABILITY/PERMANENTFLAGS/UNSEEN are informative; NONEXISTENT (RFC 5530) is an optional
        # detail Dovecot leaves out; CLOSED/HIGHESTMODSEQ belong to CONDSTORE, which only Dovecot has.
        return None
    return parts


def normalize(untagged: list[bytes], tagged: bytes) -> tuple[Any, ...]:
    status, _, text = tagged.partition(b" ")
    out: list[Any] = []
    codes: list[Any] = []
    for r in untagged:
        first = r[2:].split(b" ", 1)[0].upper()
        if first in (b"OK", b"NO", b"BAD", b"BYE"):
            # Status responses: only the response code is comparable, the text is free-form.
            code = _code(r[2 + len(first) + 1 :])
            if code is not None:
                codes.append((first, code))
            continue
        toks = tokenize(r[2:]) if r.startswith(b"* ") else [r]
        if len(toks) >= 2 and toks[1] in (b"FETCH",):
            out.append((b"FETCH", toks[0], _fetch_items(toks[2])))
        elif len(toks) >= 2 and toks[1] in (b"EXISTS", b"EXPUNGE"):
            out.append((toks[1], toks[0]))
        elif len(toks) >= 2 and toks[1] == b"RECENT":
            continue
        elif toks and toks[0] in (b"SEARCH",):
            out.append((b"SEARCH", sorted(int(x) for x in toks[1:])))
        elif toks and toks[0] == b"FLAGS":
            out.append((b"FLAGS", _norm_flags(toks[1])))
        elif toks and toks[0] in (b"LIST", b"LSUB"):
            out.append((toks[0], sorted(a.lower() for a in toks[1]), toks[2], toks[3]))
        elif toks and toks[0] == b"STATUS":
            out.append((b"STATUS", toks[1], dict(zip(toks[2][::2], toks[2][1::2], strict=True))))
        else:
            out.append(tuple(toks))
    # Order matters for EXPUNGE and FETCH; the informative OK codes may come in any order.
    return (status.upper(), _code(text), out, sorted(codes, key=repr))
