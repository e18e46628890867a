"""The DATA byte stream (RFC 5321 4.1.1.4, 4.5.2), decoded in one pass as it arrives.

``DataDecoder.feed()`` takes whatever the socket gave and returns the message
bytes that are final: transparency dots removed, with the end ``<CRLF>.<CRLF>``
found and anything after it (pipelined commands) kept in ``rest``. A bare CR or
LF anywhere (SMTP smuggling, RFC 5321 2.3.8) sets ``bare_newline``; only
``<CRLF>.<CRLF>`` ends the data, never ``<LF>.<LF>`` or ``<CR>.<CR>``.

Only an incomplete last line is held back (a line may be the terminator or start
with a dot), and never more than ``MAX_HELD`` bytes of it, so the memory a
session uses does not grow with the message.
"""

from __future__ import annotations

TERMINATOR = b"\r\n.\r\n"
MAX_HELD = 8192  # bytes of an unfinished line kept back; a longer line cannot be the terminator


class DataDecoder:
    def __init__(self) -> None:
        self._buf = b""
        # The DATA command's own CRLF came just before: the first byte starts a line.
        self._line_start = True
        self.done = False
        self.bare_newline = False
        self.rest = b""  # bytes after the terminator, for the command loop

    def feed(self, chunk: bytes) -> bytes:
        """Decode CHUNK; return the message bytes it completes (maybe b"")."""
        if self.done:
            raise ValueError("DATA already ended")
        buf = self._buf + chunk if self._buf else chunk
        if self._line_start and buf[:3] == b".\r\n":
            # The terminator right at a line start whose CRLF was given out already.
            self.done, self.rest, self._buf = True, buf[3:], b""
            return b""
        end = buf.find(TERMINATOR)
        if end >= 0:
            self.done, self.rest, self._buf = True, buf[end + len(TERMINATOR):], b""
            return self._decode(buf[:end + 2], line_start_after=True)
        last = buf.rfind(b"\r\n")
        if last >= 0:
            ready, held = buf[:last + 2], buf[last + 2:]
            out = self._decode(ready, line_start_after=True)
        else:
            ready, held, out = b"", buf, b""
        if len(held) > MAX_HELD or (held and not self._could_end(held)):
            # Not the terminator: give it out, except a last CR that a LF may complete.
            keep = 1 if held.endswith(b"\r") else 0
            out += self._decode(held[:len(held) - keep], line_start_after=False)
            held = held[len(held) - keep:]
        self._buf = held
        return out

    def _could_end(self, held: bytes) -> bool:
        """Whether HELD (no CRLF in it) may still become the terminator line, or a line that starts with a dot."""
        return self._line_start and held[:1] == b"." or held == b"\r"

    def _decode(self, part: bytes, *, line_start_after: bool) -> bytes:
        """Unstuff PART (whole lines unless LINE_START_AFTER is false) and check its line ends."""
        if not part:
            return b""
        crlf = part.count(b"\r\n")
        if part.count(b"\n") != crlf or part.count(b"\r") != crlf:
            self.bare_newline = True
        # Remove the transparency dots (RFC 5321 4.5.2): a line's first dot is dropped.
        if self._line_start and part[:1] == b".":
            part = part[1:]
        part = part.replace(b"\r\n.", b"\r\n")
        self._line_start = line_start_after
        return part
