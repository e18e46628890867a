"""The IMAP parser as an atheris target (registered in ``tests/fuzz/targets.py`` as ``imap``).

Input: the first byte picks the reader options (UTF8=ACCEPT, LITERAL-) and a chunk size; the rest
is what a client sends.  Must hold for any input: nothing but the documented events comes out
(no exception), memory stays within the caps, and the result does not depend on how the bytes
were split into reads.
"""

from __future__ import annotations

from services.access.imapproto.parser import Bad, Command, CommandReader, Fatal, NeedLiteral, RawLine

MAX_LINE, MAX_LITERAL, MAX_COMMAND, MAX_DISCARD = 256, 128, 1024, 512


def _run(opts: int, data: bytes, step: int) -> list[object]:
    r = CommandReader(max_line=MAX_LINE, max_literal=MAX_LITERAL, max_command=MAX_COMMAND,
                      max_literal_discard=MAX_DISCARD)
    r.utf8_accept = bool(opts & 1)
    r.literal_minus = bool(opts & 2)
    events: list[object] = []
    for i in range(0, len(data) + 1, step):
        r.feed(data[i:i + step])
        while (ev := r.next_event()) is not None:
            assert isinstance(ev, Command | Bad | NeedLiteral | RawLine | Fatal), ev
            events.append(ev)
            if isinstance(ev, Fatal):
                return events
            if isinstance(ev, NeedLiteral):
                # The session's decision, made deterministic: refuse every third size.
                (r.accept_literal if ev.size % 3 else r.refuse_literal)()
            elif isinstance(ev, Command) and ev.name in ("AUTHENTICATE", "IDLE"):
                r.read_line()  # as the session does for the SASL exchange / "DONE"
            elif isinstance(ev, Bad):
                assert ev.text and (ev.tag is None or "+" not in ev.tag)
        # Waiting for input, the reader holds at most an incomplete line or a literal being collected.
        assert r.buffered() <= MAX_COMMAND + MAX_LINE + 2, r.buffered()
    return events


def imap(data: bytes) -> None:
    if not data:
        return
    opts, rest = data[0], data[1:]
    whole = _run(opts, rest, len(rest) + 1)
    assert _run(opts, rest, (opts >> 2) + 1) == whole, "the way the input was split changed the result"
