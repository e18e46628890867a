"""Mailbox names and their Maildir++ directory names.

IMAP names are Unicode strings with "." as the hierarchy delimiter (Maildir++,
as in Dovecot's Maildir++ layout). INBOX is the account's Maildir itself; any
other mailbox ``Lists.Work`` is the directory ``.Lists.Work``.

On disk a name is written in modified UTF-7 (RFC 3501 §5.1.3), as Dovecot does
for Maildir++, so every directory name is plain ASCII. Two characters that are
printable ASCII are *also* shifted into base64 on disk, because the file system
gives them a meaning IMAP does not: "/" (a path separator) and "~" at the very
start (home-directory expansion in some tools). Standard mUTF-7 decoders read
the result back correctly, so no name can escape its account or collide with
another: the mapping is one-to-one and the result always starts with ".".

``check_name`` refuses only what IMAP cannot express or what would make the
hierarchy ambiguous: empty names and empty levels, control characters, and the
LIST wildcards "*" and "%" (RFC 3501 §5.1: they cannot be listed unambiguously).
"""

from __future__ import annotations

import base64

from appliance.mailstore.errors import MailstoreError

DELIMITER = "."
# A Linux file name is at most 255 bytes (the leading "." counts).
_MAX_DIR = 255
_FORCE_SHIFT = frozenset("/")


def check_name(name: str) -> str:
    """NAME as stored (INBOX and an ``INBOX.`` prefix case-folded), or MailstoreError saying why not."""
    if name.upper() == "INBOX":
        return "INBOX"
    if name[:6].upper() == "INBOX" + DELIMITER:
        name = "INBOX" + name[5:]  # RFC 3501 §5.1: INBOX is case-insensitive, also as a parent
    if not name:
        raise MailstoreError("empty mailbox name", code="CANNOT")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise MailstoreError("mailbox names cannot contain control characters", code="CANNOT")
    if "*" in name or "%" in name:
        raise MailstoreError("mailbox names cannot contain the LIST wildcards * and %", code="CANNOT")
    if "" in name.split(DELIMITER):
        raise MailstoreError(f"mailbox name {name!r} has an empty hierarchy level", code="CANNOT")
    if len(dir_name(name).encode()) > _MAX_DIR:
        raise MailstoreError("mailbox name too long", code="CANNOT")
    return name


def _b64(chars: str) -> str:
    raw = chars.encode("utf-16-be")
    return "&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-"


def encode_mutf7(name: str, force: frozenset[str] = frozenset()) -> str:
    """NAME in modified UTF-7 (RFC 3501 §5.1.3); characters in FORCE are shifted too."""
    out: list[str] = []
    run: list[str] = []
    for c in name:
        if 0x20 <= ord(c) <= 0x7E and c not in force:
            if run:
                out.append(_b64("".join(run)))
                run = []
            out.append("&-" if c == "&" else c)
        else:
            run.append(c)
    if run:
        out.append(_b64("".join(run)))
    return "".join(out)


def decode_mutf7(text: str) -> str:
    """The Unicode string for modified UTF-7 TEXT; ValueError if it is malformed."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "&":
            out.append(c)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise ValueError("unterminated base64 run")
        chunk = text[i + 1:end]
        if not chunk:
            out.append("&")
        else:
            b = chunk.replace(",", "/")
            raw = base64.b64decode(b + "=" * (-len(b) % 4))
            if len(raw) % 2:
                raise ValueError("odd UTF-16 length")
            out.append(raw.decode("utf-16-be"))
        i = end + 1
    return "".join(out)


def dir_name(name: str) -> str:
    """The Maildir++ directory (below the account root) of mailbox NAME other than INBOX."""
    force = _FORCE_SHIFT | ({"~"} if name.startswith("~") else set())
    return "." + encode_mutf7(name, frozenset(force))


def name_of_dir(entry: str) -> str | None:
    """The mailbox name for directory ENTRY, or None if ENTRY is not a mailbox directory."""
    if not entry.startswith(".") or entry in (".", ".."):
        return None
    try:
        name = decode_mutf7(entry[1:])
    except (ValueError, UnicodeDecodeError):
        return None
    try:
        name = check_name(name)
    except MailstoreError:
        return None
    # Only the canonical spelling counts, so two directories never claim one name.
    return name if dir_name(name) == entry else None
