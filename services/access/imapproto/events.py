"""What ``CommandReader.next_event`` hands the session besides ``types.Command``."""

from __future__ import annotations

from dataclasses import dataclass

from .types import Command


@dataclass(frozen=True)
class NeedLiteral:
    """The command announced a literal of SIZE octets; the session decides.

    For a synchronizing literal (``nonsync`` False) the session calls ``accept_literal()`` and
    writes "+ Ready", or ``refuse_literal()`` and answers the tag (e.g. ``NO [TOOBIG]`` for an
    APPEND over APPENDLIMIT, RFC 7889 §4).  For a non-synchronizing literal the octets are coming
    anyway: ``refuse_literal()`` makes the reader discard them (RFC 7888 §4).  ``command`` is the
    upper-cased command name (the inner one for the UID forms), e.g. "APPEND".
    ``binary`` is RFC 3516's literal8 ``~{n}``.
    """

    tag: str
    command: str
    size: int
    nonsync: bool
    binary: bool


@dataclass(frozen=True)
class Bad:
    """Answer ``<tag> <status> [code] text`` (``* BAD`` when ``tag`` is None) and go on reading.

    ``status`` is "BAD" for input that breaks the grammar.  It is "NO" for a well-formed command
    that cannot be carried out as written: a mailbox name that is not valid modified UTF-7 /
    UTF-8 (as the reference server answers), an unsupported charset (RFC 9051 §6.4.4: NO with
    code BADCHARSET), an APPEND literal over the reader's cap (RFC 7889 §4: NO [TOOBIG]).
    """

    tag: str | None
    text: str
    code: str | None = None
    status: str = "BAD"


@dataclass(frozen=True)
class RawLine:
    """A line requested with ``read_line()`` (AUTHENTICATE responses, IDLE's "DONE"), without CRLF."""

    data: bytes


@dataclass(frozen=True)
class Fatal:
    """The input cannot be resynchronised: send ``* BYE <text>`` and close."""

    text: str


Event = Command | NeedLiteral | Bad | RawLine | Fatal
