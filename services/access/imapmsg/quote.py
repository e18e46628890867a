"""IMAP string serialization for FETCH data (RFC 9051 §4.3), written the way Dovecot writes it.

``nstring`` is a quoted string when it can be one (RFC 9051 §4.3: no CR, LF or 8-bit
bytes; a few escaped quotes/backslashes), otherwise a literal. ``humans`` is for text a person
reads (subject, display names): whitespace runs and folding collapse to one space and the
value is trimmed; anything that needed changing or escaping is sent as a literal. Both
match Dovecot's ``imap-quote.c`` so the differential can compare bytes (the generic
``imapproto.wire.string`` chooses differently, e.g. it quotes 8-bit text for UTF8=ACCEPT).
"""

from __future__ import annotations

import re

from services.access.imapproto.wire import literal

_MAX_ESCAPES = 4  # beyond this many '"'/'\\' a literal is shorter to read (Dovecot's choice)
# Values that need no escaping and no literal: quoted as they are, without the byte-by-byte loop
# (most header text; ENVELOPE writes about 15 strings per message, issue 13).
_QUOTABLE = re.compile(rb'[^\x00\r\n"\\\x80-\xff]*')
_HUMAN_PLAIN = re.compile(rb'[^\x00\t\r\n"\\\x80-\xff ]+(?: [^\x00\t\r\n"\\\x80-\xff ]+)*')


def nstring(value: bytes | str | None) -> bytes:
    if value is None:
        return b"NIL"
    b = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if _QUOTABLE.fullmatch(b):
        return b'"' + b + b'"'
    return _nstring_general(b)


def _nstring_general(b: bytes) -> bytes:
    escapes = 0
    for c in b:
        if c in (0x22, 0x5C):
            escapes += 1
            if escapes > _MAX_ESCAPES:
                return literal(b)
        elif c in (0x0D, 0x0A, 0x00) or c >= 0x80:
            return literal(b)
    return b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def nstring_nolf(value: bytes | str | None) -> bytes:
    """nstring of a header value with its (folding) line breaks removed."""
    if value is None:
        return b"NIL"
    b = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return nstring(b.replace(b"\r", b"").replace(b"\n", b""))


def humans(value: bytes | str | None) -> bytes:
    """A string for human eyes: CR/LF/TAB/SP runs become one space, ends trimmed, NUL -> 0x80."""
    if value is None:
        return b"NIL"
    b = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if _HUMAN_PLAIN.fullmatch(b):
        return b'"' + b + b'"'
    return _humans_general(b)


def _humans_general(b: bytes) -> bytes:
    modify = False
    for i, c in enumerate(b):
        if c in (0x0D, 0x0A, 0x09, 0x00, 0x22, 0x5C) or c >= 0x80:
            modify = True
            break
        if c == 0x20 and (i == 0 or b[i - 1] == 0x20 or i == len(b) - 1):
            modify = True
            break
    if not modify:
        return b'"' + b + b'"'
    out = bytearray()
    pending_space = False
    for c in b:
        if c in (0x0D, 0x0A, 0x09, 0x20):
            pending_space = bool(out)
            continue
        if pending_space:
            out.append(0x20)
            pending_space = False
        out.append(0x80 if c == 0 else c)
    if not out:
        return b'""'
    return literal(bytes(out))
