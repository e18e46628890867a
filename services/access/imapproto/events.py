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
    """Answer ``<tag> BAD [code] text`` (``* BAD`` when ``tag`` is None) and go on reading.

    code "BADCHARSET" (SEARCH/SORT/THREAD with a charset other than US-ASCII / UTF-8) is the one
    refusal that RFC 9051 §6.4.4 answers with a tagged NO, not BAD: the session must do so.
    """

    tag: str | None
    text: str
    code: str | None = None


@dataclass(frozen=True)
class RawLine:
    """A line requested with ``read_line()`` (AUTHENTICATE responses, IDLE's "DONE"), without CRLF."""

    data: bytes


@dataclass(frozen=True)
class Fatal:
    """The input cannot be resynchronised: send ``* BYE <text>`` and close."""

    text: str


Event = Command | NeedLiteral | Bad | RawLine | Fatal
