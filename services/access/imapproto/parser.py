"""Bytes -> IMAP commands, pull-based, so the session decides about every literal before more is read.

``CommandReader`` frames the input: lines, synchronizing ``{n}`` and non-synchronizing ``{n+}``
literals (RFC 7888), literal8 ``~{n}`` (RFC 3516), and enforces the caps (line length, literal
size, command size, octets thrown away).  The grammar of the assembled command is in
``commands.py`` (with ``fetchsearch.py`` and ``cursor.py``).  No I/O here: the session feeds
bytes in and writes what the events ask for.
"""

from __future__ import annotations

import re

from .commands import KNOWN_COMMANDS, parse_command
from .cursor import TAG
from .events import Bad, Event, Fatal, NeedLiteral, RawLine
from .types import Command

__all__ = ["Bad", "Command", "CommandReader", "Event", "Fatal", "NeedLiteral", "RawLine"]

# The first words of a command line: tag SP name [SP name] (the second for UID forms).
_HEAD = re.compile(rb"([^ ]*)(?: ([A-Za-z0-9.-]*))?(?: ([A-Za-z]+))?")
# A literal announcement at the end of a line: [~] "{" number ["+"] "}" (RFC 9051 §9 literal, RFC 3516 literal8).
_LIT_END = re.compile(rb"(~?)\{(\d+)(\+?)\}\Z")
# Everything outside/inside complete quoted strings; stops at an unterminated quote.
_QUOTE_SCAN = re.compile(rb'(?:[^"]++|"(?:[^"\\\n]++|\\.)*+")*+')
LITERAL_MINUS_MAX = 4096  # RFC 7888 §5: LITERAL- allows non-synchronizing literals up to 4096 octets

_LINE, _PENDING, _LITERAL, _DISCARD, _DISCARD_REST, _SKIP, _DEAD = range(7)
_AGAIN = object()  # internal: the state changed, step again


def _literal_at_end(line: bytes) -> re.Match[bytes] | None:
    """The literal announced at the end of LINE (RFC 7888 §4: the server checks the end of every
    line), unless those characters sit inside a quoted string."""
    if not line.endswith(b"}"):
        return None
    m = _LIT_END.search(line, max(0, line.rfind(b"{") - 1))
    if m is None:
        return None
    q = _QUOTE_SCAN.match(line, 0, m.start())
    return m if q is not None and q.end() == m.start() else None


class CommandReader:
    """Assemble commands from the byte stream of one connection.  Never unbounded: a line over
    ``max_line`` is skipped to its end (Bad) or, past ``max_command`` octets, Fatal; a literal over
    ``max_literal`` (APPEND: over ``max_command``) is refused by the reader itself; a refused
    non-synchronizing literal is read and thrown away up to ``max_literal_discard`` octets."""

    def __init__(self, *, max_line: int = 65536, max_literal: int = 65536, max_command: int = 4 << 20,
                 max_literal_discard: int = 1 << 20) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_command = max_command
        self.max_literal_discard = max_literal_discard
        self.utf8_accept = False
        self.imap4rev2 = False
        self.literal_minus = False
        self._buf = bytearray()
        self._pos = 0
        self._mode = _LINE
        self._raw = False
        self._fatal: Fatal | None = None
        self._reset_command()

    def _reset_command(self) -> None:
        self._parts: list[bytes] = []
        self._text_len = 0
        self._literals: dict[int, tuple[bytes, bool]] = {}
        self._size = 0
        self._discarded = 0
        self._tag: str | None = None
        self._command = ""
        self._pending: NeedLiteral | None = None
        self._after: Bad | None = None  # what to answer once a discard is over
        self._discarding = False
        self._need = 0
        self._skipped = 0
        self._tail = b""

    # ---- the session's side ------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._mode != _DEAD:
            self._buf += data

    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def take_buffered(self) -> bytes:
        """The input not parsed yet, removed (a proxied login hands it to the home box)."""
        rest = bytes(self._buf[self._pos:])
        self._buf, self._pos = bytearray(), 0
        return rest

    def read_line(self) -> None:
        """The next complete line is returned as RawLine (AUTHENTICATE exchange, IDLE "DONE")."""
        self._raw = True

    def accept_literal(self) -> None:
        if self._mode != _PENDING or self._pending is None:
            raise RuntimeError("accept_literal() without a pending NeedLiteral")
        self._need = self._pending.size
        self._mode = _LITERAL

    def refuse_literal(self) -> None:
        if self._mode != _PENDING or self._pending is None:
            raise RuntimeError("refuse_literal() without a pending NeedLiteral")
        pending = self._pending
        if pending.nonsync:
            # RFC 7888 §4: the client sends the octets without waiting; they are not a command.
            self._start_discard(pending.size, None)
        else:
            self._reset_command()
            self._mode = _LINE

    def next_event(self) -> Event | None:
        """The next event, or None when more input is needed.  While a NeedLiteral waits for
        accept_literal()/refuse_literal() it is returned again."""
        while True:
            ev = self._step()
            if ev is not _AGAIN:
                self._compact()
                return ev  # type: ignore[return-value]

    # ---- the machine ---------------------------------------------------------------------------

    def _step(self) -> object:
        mode = self._mode
        if mode == _LINE:
            return self._on_line()
        if mode == _PENDING:
            return self._pending
        if mode == _LITERAL:
            return self._on_literal()
        if mode == _DISCARD:
            return self._on_discard()
        if mode == _DISCARD_REST:
            return self._on_discard_rest()
        if mode == _SKIP:
            return self._on_skip()
        return self._fatal

    def _compact(self) -> None:
        if self._pos >= len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0

    def _die(self, text: str) -> Fatal:
        self._fatal = Fatal(text)
        self._mode = _DEAD
        self._buf.clear()
        self._pos = 0
        return self._fatal

    def _take_line(self) -> bytes | None:
        """The next line without its CRLF (a bare LF is tolerated), None if incomplete; an overlong
        line switches to _SKIP and returns None."""
        buf, pos = self._buf, self._pos
        i = buf.find(b"\n", pos, pos + self.max_line + 2)
        if i < 0:
            if len(buf) - pos > self.max_line + 1:
                self._begin_skip()
            return None
        end = i - 1 if i > pos and buf[i - 1] == 13 else i
        if end - pos > self.max_line:
            self._begin_skip()
            return None
        line = bytes(buf[pos:end])
        self._pos = i + 1
        return line

    def _begin_skip(self) -> None:
        if not self._parts and not self._raw:
            # Look only at the first max_line octets, so that the answer does not depend on how
            # much of the line had arrived when it was found too long.
            m = TAG.match(self._buf, self._pos, self._pos + self.max_line)
            if m and self._buf[m.end():m.end() + 1] == b" ":
                self._tag = m.group().decode("ascii")
        self._mode = _SKIP
        self._skipped = 0
        self._tail = b""

    def _on_skip(self) -> object:
        buf, pos = self._buf, self._pos
        i = buf.find(b"\n", pos)
        chunk_end = len(buf) if i < 0 else i
        self._skipped += chunk_end - pos
        self._tail = (self._tail + bytes(buf[max(pos, chunk_end - 32):chunk_end]))[-32:]
        if self._skipped > self.max_command:
            return self._die("Line too long")
        if i < 0:
            self._pos = len(buf)
            return None
        self._pos = i + 1
        tail = self._tail.rstrip(b"\r")
        raw = self._raw and not self._parts
        self._raw = self._raw and not raw
        # Skipping the rest of a refused command: the answer decided then still stands.
        bad = self._after if self._discarding else Bad(None if raw else self._tag, "Line too long")
        lm = _LIT_END.search(tail)
        if lm and lm.group(3) and not raw:
            return self._refuse_nonsync(lm.group(2), bad)
        self._reset_command()
        self._mode = _LINE
        return bad if bad is not None else _AGAIN

    def _on_line(self) -> object:
        line = self._take_line()
        if line is None:
            return _AGAIN if self._mode != _LINE else None
        if self._raw and not self._parts:
            self._raw = False
            return RawLine(line)
        if not self._parts:
            head = _HEAD.match(line)
            assert head is not None  # every group is optional
            tag, name, inner = head.groups()
            self._tag = tag.decode("ascii") if TAG.fullmatch(tag) else None
            command = (name or b"").upper().decode("ascii")
            if command == "UID" and inner:
                command = inner.upper().decode("ascii")
            self._command = command
        self._size += len(line)
        lm = _literal_at_end(line)
        if lm is None:
            self._parts.append(line)
            text = b"".join(self._parts)
            literals, tag, too_long = self._literals, self._tag, self._size_exceeded(0)
            self._reset_command()
            if too_long:
                return Bad(tag, "Command too long", "LIMIT")
            return parse_command(text, literals, self.utf8_accept, tag)
        self._parts.append(line)
        self._text_len += len(line)
        binary, digits, plus = lm.groups()
        nonsync = bool(plus)
        refusal = self._literal_refusal(digits, nonsync)
        if refusal is not None:
            if nonsync:
                return self._refuse_nonsync(digits, refusal)
            self._reset_command()
            return refusal
        self._pending = NeedLiteral(self._tag or "", self._command, int(digits), nonsync, bool(binary))
        self._mode = _PENDING
        return self._pending

    def _size_exceeded(self, extra: int) -> bool:
        return self._size + extra > self.max_command

    def _literal_refusal(self, digits: bytes, nonsync: bool) -> Bad | None:
        """The reader's own caps, checked before the session is asked."""
        tag = self._tag
        if tag is None:
            return Bad(None, "Missing or invalid tag")
        if self._command not in KNOWN_COMMANDS:
            return Bad(tag, "Unknown command")
        size = int(digits) if len(digits) <= 20 else self.max_command + 1
        if nonsync and self.literal_minus and size > LITERAL_MINUS_MAX:
            # RFC 7888 §5: with LITERAL-, a larger non-synchronizing literal MUST get a tagged BAD.
            return Bad(tag, "Non-synchronizing literal over 4096 octets", "TOOBIG")
        if self._command == "APPEND":
            if size > self.max_command or self._size_exceeded(size):
                return Bad(tag, "Literal too big", "TOOBIG", "NO")  # RFC 7889 §4
        elif size > self.max_literal or self._size_exceeded(size):
            return Bad(tag, "Literal too big", "LIMIT")
        return None

    def _refuse_nonsync(self, digits: bytes, bad: Bad | None) -> object:
        size = int(digits) if len(digits) <= 20 else self.max_literal_discard + 1
        self._start_discard(size, bad)
        return _AGAIN

    def _start_discard(self, size: int, after: Bad | None) -> None:
        self._discarded += size
        if self._discarded > self.max_literal_discard:
            self._die("Literal too big to skip")
            return
        tag, discarded = self._tag, self._discarded
        self._reset_command()
        self._tag, self._discarded, self._after, self._discarding = tag, discarded, after, True
        self._need = size
        self._mode = _DISCARD

    def _on_literal(self) -> object:
        buf, pos, need = self._buf, self._pos, self._need
        if len(buf) - pos < need:
            return None
        binary = self._pending.binary if self._pending else False
        self._literals[self._text_len] = (bytes(buf[pos:pos + need]), binary)
        self._pos = pos + need
        self._size += need
        self._pending = None
        self._mode = _LINE
        return _AGAIN

    def _on_discard(self) -> object:
        take = min(len(self._buf) - self._pos, self._need)
        self._pos += take
        self._need -= take
        if self._need:
            return None
        self._mode = _DISCARD_REST
        return _AGAIN

    def _on_discard_rest(self) -> object:
        """After a thrown-away literal: the rest of that command's line, and any further
        non-synchronizing literals it announces, are thrown away too."""
        line = self._take_line()
        if line is None:
            return _AGAIN if self._mode == _SKIP else None
        lm = _literal_at_end(line)
        if lm and lm.group(3):
            size = int(lm.group(2)) if len(lm.group(2)) <= 20 else self.max_literal_discard + 1
            self._start_discard(size, self._after)
            return _AGAIN
        after = self._after
        self._reset_command()
        self._mode = _LINE
        return after if after is not None else _AGAIN
