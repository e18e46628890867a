"""Input of a POP3 connection cut into lines, each with a length cap.

A line longer than its cap is not kept: the framer hands out ``TOO_LONG`` once and
drops the rest of it up to the next line end, so a client cannot grow the buffer by
never ending a line. Lines end in CRLF; a bare LF is accepted as well (as Dovecot does).
"""

from __future__ import annotations

from services.access.pop3.commands import TOO_LONG


class LineFramer:
    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of the unread part (compacted now and then, so taking a line is O(line))
        self._discarding = False  # skipping the rest of a line that was too long

    def feed(self, data: bytes) -> None:
        self._buf += data

    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def take_rest(self) -> bytes:
        """Everything not read yet, removed from the buffer."""
        rest = bytes(self._buf[self._pos:])
        self.clear()
        return rest

    def clear(self) -> None:
        """Forget everything unread (RFC 2595 §4: what was pipelined behind STLS)."""
        self._buf.clear()
        self._pos = 0
        self._discarding = False

    def next_line(self, limit: int) -> bytes | None:
        """The next line without its line end; TOO_LONG if it is over LIMIT octets with CRLF; None: need more."""
        while True:
            nl = self._buf.find(b"\n", self._pos)
            if self._discarding:
                if nl < 0:
                    self.clear()
                    self._discarding = True
                    return None
                self._take(nl + 1)
                self._discarding = False
                continue
            if nl < 0:
                if self.buffered() + 1 > limit:  # even its CRLF would not fit any more
                    self.clear()
                    self._discarding = True
                    return TOO_LONG
                return None
            line = bytes(self._buf[self._pos:nl])
            self._take(nl + 1)
            if line.endswith(b"\r"):
                line = line[:-1]
            return TOO_LONG if len(line) + 2 > limit else line

    def _take(self, end: int) -> None:
        self._pos = end
        if self._pos >= len(self._buf):
            self.clear()
        elif self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0
