"""A message as a POP3 multi-line response, encoded chunk by chunk (RETR and TOP stream through this).

RFC 1939 §3: a multi-line response is lines ending in CRLF; a line that begins with
the termination octet "." gets one more "." in front ("byte-stuffing"), and the
response ends with ".CRLF". Maildir files written by the relay end lines in LF, so
LF becomes CRLF here, the same conversion as ``appliance.mailstore.maildir.crlf``
(which is what the index's sizes count): a CRLF stays, a lone LF becomes CRLF, a
lone CR is left alone.

The encoder keeps two bytes of state between chunks, never a line: a 100 MB
message with no line break at all still streams in bounded memory.
"""

from __future__ import annotations

TERMINATOR = b".\r\n"


class MessageEncoder:
    """Feed raw file chunks to ``encode``, then call ``finish`` once; concatenated they are the response body.

    ``body_lines``: None for RETR (the whole message); n for TOP (RFC 1939 §7: the
    header, the blank line after it, and then n lines of the body).
    """

    def __init__(self, body_lines: int | None = None) -> None:
        self._tail = b"\r\n"  # the last two octets sent; "\r\n" at the start: line start
        self._top = body_lines
        self._in_header = True
        self._line_len = 0  # octets of the current line so far (TOP only)
        self.done = False  # TOP: everything wanted has been produced; ignore further input

    def encode(self, chunk: bytes) -> bytes:
        if self.done or not chunk:
            return b""
        # CRLF conversion; a CR at the end of the last chunk may pair with an LF here.
        head = b""
        if self._tail.endswith(b"\r") and chunk.startswith(b"\n"):
            head, chunk = b"\n", chunk[1:]
        out = head + chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self._top is not None:
            out = self._cut(out)
        # Byte-stuffing. The pattern is 3 octets and the tail 2, so a match across the
        # chunk boundary starts in the tail and its inserted "." falls after it.
        joined = self._tail + out
        stuffed = joined.replace(b"\r\n.", b"\r\n..")[len(self._tail):]
        self._tail = joined[-2:]
        return stuffed

    def finish(self) -> bytes:
        """The end of the response: a CRLF if the message did not end with one, then ".CRLF"."""
        self.done = True
        return (b"" if self._tail == b"\r\n" else b"\r\n") + TERMINATOR

    def _cut(self, data: bytes) -> bytes:
        """DATA (already CRLF) up to where TOP stops; sets ``done`` when that point is in it."""
        assert self._top is not None
        pos = 0
        while True:
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._line_len += len(data) - pos
                return data
            length = self._line_len + (nl - pos)  # octets before the LF, the CR included
            self._line_len = 0
            pos = nl + 1
            if self._in_header:
                if length == 1:  # only the CR: the empty line that ends the header
                    self._in_header = False
                    if self._top == 0:
                        self.done = True
                        return data[:pos]
            else:
                self._top -= 1
                if self._top == 0:
                    self.done = True
                    return data[:pos]


def encode_message(data: bytes, body_lines: int | None = None, chunk: int = 65536) -> bytes:
    """The whole response body for DATA at once (tests, and small listings)."""
    enc = MessageEncoder(body_lines)
    parts = [enc.encode(data[i:i + chunk]) for i in range(0, len(data), chunk)]
    return b"".join(parts) + enc.finish()
