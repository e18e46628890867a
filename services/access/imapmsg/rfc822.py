"""RFC 5322 / RFC 2045 lexical tokens over header field values (bytes), Dovecot-compatible.

The rules follow Dovecot's ``rfc822-parser.c`` because ENVELOPE and BODYSTRUCTURE must show
what the reference server shows on odd input: 8-bit bytes count as atext (RFC 6532 §3.2),
comments are skipped as whitespace but the last one is remembered (an addr-spec's trailing
comment becomes the display name), and folded line breaks inside quoted strings vanish.
"""

from __future__ import annotations

# RFC 5322 §3.2.3 specials; atext is every other visible byte (and any 8-bit byte).
_SPECIALS = frozenset(b'()<>[]:;@\\,."')
_ATEXT = frozenset(c for c in range(33, 256) if c not in _SPECIALS and c != 127)
# RFC 2045 §5.1 tspecials; a token is any other visible US-ASCII byte (8-bit accepted too).
_TSPECIALS = frozenset(b'()<>@,;:\\"/[]?=')
_TOKEN = frozenset(c for c in range(33, 256) if c not in _TSPECIALS and c != 127)
_WSP = frozenset(b" \t\r\n")


def text(b: bytes) -> str:
    """Bytes from a header as str, 8-bit bytes kept losslessly (re-encoded by ``raw``)."""
    return b.decode("utf-8", "surrogateescape")


def raw(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


class Parser:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)
        self.last_comment: bytes = b""

    def at_end(self) -> bool:
        return self.pos >= self.end

    def peek(self) -> int:
        return self.data[self.pos] if self.pos < self.end else -1

    def skip_cfws(self) -> bool:
        """Skip whitespace and comments (RFC 5322 §3.2.2); True if input remains."""
        d = self.data
        while self.pos < self.end:
            c = d[self.pos]
            if c in _WSP:
                self.pos += 1
            elif c == 0x28:  # "("
                if not self._comment():
                    return False
            else:
                return True
        return False

    def _comment(self) -> bool:
        d = self.data
        depth = 0
        out = bytearray()
        while self.pos < self.end:
            c = d[self.pos]
            self.pos += 1
            if c == 0x28:
                if depth:
                    out.append(c)
                depth += 1
            elif c == 0x29:
                depth -= 1
                if depth == 0:
                    self.last_comment = bytes(out)
                    return True
                out.append(c)
            elif c == 0x5C and self.pos < self.end:  # quoted-pair
                out.append(d[self.pos])
                self.pos += 1
            elif c in (0x0D, 0x0A):
                continue
            else:
                out.append(c)
        self.last_comment = bytes(out)  # unterminated: the rest of the value was the comment
        return False

    def _run(self, allowed: frozenset[int]) -> bytes:
        start = self.pos
        d = self.data
        while self.pos < self.end and d[self.pos] in allowed:
            self.pos += 1
        return d[start : self.pos]

    def mime_token(self) -> str:
        return text(self._run(_TOKEN))

    def quoted_string(self) -> str | None:
        """At a DQUOTE: the unescaped content (folding removed), then CFWS skipped. None if unterminated."""
        d = self.data
        self.pos += 1
        out = bytearray()
        while self.pos < self.end:
            c = d[self.pos]
            self.pos += 1
            if c == 0x22:
                self.skip_cfws()
                return text(bytes(out))
            if c == 0x5C and self.pos < self.end:
                out.append(d[self.pos])
                self.pos += 1
            elif c in (0x0D, 0x0A):
                continue
            else:
                out.append(c)
        return None

    def atom_or_dot(self) -> bytes | None:
        """atext and dots, as obs-phrase allows; None if not at one."""
        allowed = _ATEXT | {0x2E}
        if self.peek() not in allowed:
            return None
        word = self._run(allowed)
        self.skip_cfws()
        return word

    def phrase(self) -> str | None:
        """RFC 5322 phrase / obs-phrase: words joined by one space; None if there is no word."""
        words: list[str] = []
        while not self.at_end():
            c = self.peek()
            if c == 0x22:
                q = self.quoted_string()
                if q is None:
                    return None
                words.append(q)
            elif c in _ATEXT or c == 0x2E:
                w = self.atom_or_dot()
                assert w is not None
                words.append(text(w))
            else:
                break
        if not words:
            return None
        return " ".join(words)

    def dot_atom(self) -> str | None:
        """dot-atom (and obs-local-part's loose dots); CFWS between pieces dropped."""
        pieces: list[bytes] = []
        while True:
            atom = self._run(_ATEXT)
            if not atom and not pieces:
                return None
            pieces.append(atom)
            self.skip_cfws()
            if self.peek() != 0x2E:
                break
            self.pos += 1
            pieces.append(b".")
            self.skip_cfws()
        return text(b"".join(pieces))

    def domain(self) -> str | None:
        """After "@": dot-atom or domain-literal ("[...]", kept with its brackets)."""
        self.skip_cfws()
        if self.peek() == 0x5B:
            start = self.pos
            close = self.data.find(b"]", self.pos)
            if close < 0:
                return None
            self.pos = close + 1
            lit = bytes(c for c in self.data[start : self.pos] if c not in (0x0D, 0x0A))
            self.skip_cfws()
            return text(lit)
        return self.dot_atom()
