"""XTND XMIT (qpopper, Eudora): a message sent inside a POP3 session, collected line by line.

The client sends the message as a multi-line block (RFC 1939 §3 byte-stuffing,
ended by "."). It is size-limited while it is read: past ``relay.max_message_size``
the rest is read and dropped, and the message is refused at the end, so the session
stays in step with the client. The session hands the result to the relay
(``Backend.send``), which judges it like any submission.
"""

from __future__ import annotations

MAX_XMIT_LINE = 65536  # one message line (RFC 5322 allows 998 octets; mail in the wild is longer)


class Incoming:
    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.size = 0
        self.refusal = ""
        self._lines: list[bytes] = []

    def add(self, line: bytes, too_long: bool = False) -> bool:
        """One line (without its CRLF); True when it was the final "."."""
        if too_long:
            self.refusal = self.refusal or f"Message line too long (at most {MAX_XMIT_LINE} octets)"
            return False
        if line == b".":
            if not self.refusal and self.size > self.max_size:
                self.refusal = f"Message exceeds the size limit of {self.max_size} bytes"
            return True
        if line.startswith(b"."):  # RFC 1939 §3 byte-stuffing, undone
            line = line[1:]
        self.size += len(line) + 2
        if self.size <= self.max_size:
            self._lines.append(line + b"\r\n")
        return False

    def message(self) -> bytes:
        return b"".join(self._lines)
