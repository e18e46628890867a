"""POP3 command lines -> typed commands. No I/O, no state: the session decides what a command means now.

Grammar: RFC 1939 §3 (a keyword, then arguments separated by single spaces;
keywords are case-insensitive) and RFC 2449 §3-4 (a command line is at most 255
octets including the CRLF). ``parse`` never raises: every line is either a
``Command`` or an ``Invalid`` whose text follows "-ERR ".
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

MAX_COMMAND_LINE = 255  # RFC 2449 §4, CRLF included
# RFC 5034 §4: a SASL response line is not bound by the 255 octets; a cap of our own still applies.
MAX_SASL_LINE = 8192
MAX_NUMBER_DIGITS = 10  # a message number or line count; RFC 2449 §4 allows arguments of up to 40 octets



class _TooLong(bytes):
    """The framing's marker for a line over its limit (compared by identity: ``line is TOO_LONG``)."""


TOO_LONG = _TooLong(b"")

# Keyword -> (minimum, maximum) arguments; None: the rest of the line is one argument.
_NO_ARGS = (0, 0)
_ARITY: dict[str, tuple[int, int] | None] = {
    "CAPA": _NO_ARGS, "QUIT": _NO_ARGS, "STLS": _NO_ARGS, "STAT": _NO_ARGS, "RSET": _NO_ARGS, "NOOP": _NO_ARGS,
    "USER": None, "PASS": None,
    "AUTH": (0, 2),
    "LIST": (0, 1), "UIDL": (0, 1),
    "RETR": (1, 1), "DELE": (1, 1),
    "TOP": (2, 2),
    "XTND": (1, 1),
    "XCLIENT": (1, 4),  # from a fleet box only (services/access/pop3/xclient.py)
}
# Commands whose arguments are message numbers (then, for TOP, a line count).
_NUMBERED = {"LIST", "UIDL", "RETR", "DELE", "TOP"}


@dataclass(frozen=True, slots=True)
class Command:
    verb: str  # upper case
    args: tuple[str, ...] = ()
    msg: int | None = None  # the message number, for the numbered commands that have one
    lines: int | None = None  # TOP's line count


@dataclass(frozen=True, slots=True)
class Invalid:
    text: str  # what follows "-ERR "


def parse(line: bytes) -> Command | Invalid:
    """LINE (without its CRLF) as a Command, or Invalid saying why not."""
    if len(line) + 2 > MAX_COMMAND_LINE:
        return Invalid(f"Command line too long (at most {MAX_COMMAND_LINE} octets, RFC 2449)")
    keyword, sp, rest = line.partition(b" ")
    verb = keyword.decode("ascii", "replace").upper()
    arity = _ARITY.get(verb, ())
    if arity == ():
        return Invalid("Unknown command")
    text = rest.decode("utf-8", "replace")
    if arity is None:  # USER name / PASS secret: spaces belong to the argument (RFC 1939 §7 PASS)
        if not text:
            return Invalid(f"{verb} needs an argument")
        return Command(verb, (text,))
    args = tuple(text.split(" ")) if sp else ()
    lo, hi = arity
    if verb in ("CAPA", "QUIT", "STLS", "STAT", "RSET", "NOOP"):
        return Command(verb)  # arguments to these are ignored, as Dovecot and most servers do
    if len(args) < lo:
        return Invalid(f"{verb} needs {'a message number' if verb != 'TOP' else 'a message number and a line count'}"
                       if verb in _NUMBERED else f"{verb} needs an argument")
    if len(args) > hi:
        return Invalid(f"Too many arguments to {verb}")
    if verb not in _NUMBERED:
        return Command(verb, args)
    msg = _number(args[0]) if args else None
    if args and msg is None:
        return Invalid(f"Invalid message number: {args[0][:40]}")
    if verb == "TOP":
        count = _number(args[1])
        if count is None:
            return Invalid(f"Invalid line count: {args[1][:40]}")
        return Command(verb, args, msg, count)
    return Command(verb, args, msg)


def _number(text: str) -> int | None:
    """A non-negative decimal number as RFC 1939 writes them (digits only, no sign or spaces)."""
    if not text or len(text) > MAX_NUMBER_DIGITS or not text.isascii() or not text.isdigit():
        return None
    return int(text)


# --- SASL PLAIN (RFC 4616), as POP3 AUTH carries it (RFC 5034) ------------------------------


class SaslError(ValueError):
    """A client response that is not valid PLAIN; ``str()`` is what follows "-ERR ".

    RFC 3206 §4 [AUTH] on each, as Dovecot answers: the login failed for a reason in
    what the client sent, not for a reason of the server's.
    """


def decode_base64(text: str) -> bytes:
    """RFC 5034 §4: the response is base64; "=" alone is an empty initial response."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SaslError("[AUTH] Invalid base64 data in the SASL response") from None


def plain_credentials(message: bytes) -> tuple[str, str]:
    """(login, password) from a PLAIN message ``[authzid] NUL authcid NUL passwd`` (RFC 4616 §2)."""
    parts = message.split(b"\0")
    if len(parts) != 3:
        raise SaslError("[AUTH] Invalid PLAIN message")
    authzid, authcid, passwd = parts
    try:
        login, secret, zid = authcid.decode("utf-8"), passwd.decode("utf-8"), authzid.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError("[AUTH] PLAIN credentials must be UTF-8 (RFC 4616 §2)") from None
    if not login or not secret:
        raise SaslError("[AUTH] Invalid PLAIN message: empty login or password")
    # RFC 4616 §2: an authorization identity other than one's own needs proxy rights; nobody has them here.
    if zid and zid.lower() != login.lower():
        raise SaslError("[AUTH] Authorization as another user is not permitted")
    return login, secret
