"""Drive a CommandReader the way a session does: feed, pull events, decide about literals."""

from __future__ import annotations

from collections.abc import Iterable

from services.access.imapproto.parser import CommandReader, Fatal, NeedLiteral


def run(reader: CommandReader, chunks: Iterable[bytes], accept: bool = True) -> list[object]:
    """Feed CHUNKS one by one, pulling every event after each; literals accepted (or refused)."""
    out: list[object] = []
    for chunk in chunks:
        reader.feed(chunk)
        drain(reader, out, accept)
    return out


def drain(reader: CommandReader, out: list[object], accept: bool = True) -> None:
    while True:
        ev = reader.next_event()
        if ev is None:
            return
        out.append(ev)
        if isinstance(ev, NeedLiteral):
            if accept:
                reader.accept_literal()
            else:
                reader.refuse_literal()
        elif isinstance(ev, Fatal):
            return


def commands(data: bytes, reader: CommandReader | None = None) -> list[object]:
    """Every event except NeedLiteral, for DATA fed in one piece with literals accepted."""
    return [e for e in run(reader or CommandReader(), [data]) if not isinstance(e, NeedLiteral)]


def one(data: bytes, reader: CommandReader | None = None) -> object:
    reader = reader or CommandReader()
    evs = [e for e in run(reader, [data]) if not isinstance(e, NeedLiteral)]
    assert len(evs) == 1, evs
    return evs[0]
