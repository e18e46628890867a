"""Maildir file names, flags and line endings (https://cr.yp.to/proto/maildir.html).

A message file in ``cur/`` is named ``<stem>:2,<letters>``. The stem is the
unique name the writer chose, plus ``,U=<uid>`` once the store gave it a UID
(so a lost index is rebuilt with the same UIDs) and, from the relay,
``,W=<octets>``: the size with CRLF line endings (Dovecot's "virtual size"), so
a delivery is indexed without reading the file. The info letters carry the
standard flags so other Maildir tools see them; keywords live in the index only.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import time
from collections.abc import Iterable

# Flags as a bitmask in the index. $Forwarded has a Maildir letter (P, "passed"), so it is kept
# with the system flags; other keywords are text.
SEEN, ANSWERED, FLAGGED, DELETED, DRAFT, FORWARDED = 1, 2, 4, 8, 16, 32
FLAG_BITS = {"\\Seen": SEEN, "\\Answered": ANSWERED, "\\Flagged": FLAGGED, "\\Deleted": DELETED,
             "\\Draft": DRAFT, "$Forwarded": FORWARDED}
SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
# Letters in ASCII order, as the Maildir specification requires in the info part.
LETTERS = (("D", DRAFT), ("F", FLAGGED), ("P", FORWARDED), ("R", ANSWERED), ("S", SEEN), ("T", DELETED))
_LETTER_BIT = dict(LETTERS)
_CANON = {f.lower(): f for f in (*FLAG_BITS, "\\Recent")}

_counter = itertools.count(1)  # next() is atomic in CPython; writers run in several threads
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")
_UID = re.compile(r",U=(\d+)(?=,|$)")
_VSIZE = re.compile(r",W=(\d+)(?=,|$)")


def unique_name() -> str:
    """A new Maildir file name (time, microseconds, pid, counter, host), unique on this host."""
    now = time.time()
    return f"{int(now)}.M{int(now * 1e6) % 1_000_000}P{os.getpid()}Q{next(_counter)}.{_HOST}"


def crlf(data: bytes) -> bytes:
    """DATA with every line ending as CRLF (IMAP and POP sizes and octets are of this form)."""
    if data.count(b"\n") == data.count(b"\r\n"):  # already CRLF throughout (APPENDed mail): no copy
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def crlf_size(data: bytes) -> int:
    """len(crlf(DATA)) without building the copy."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def split_name(filename: str) -> tuple[str, str]:
    """(stem, info letters) of a Maildir file name."""
    stem, sep, info = filename.partition(":2,")
    return stem, info if sep else ""


def uid_in(stem: str) -> int | None:
    """The UID a stem carries (the last ``,U=``: a file copied in from another store may carry two)."""
    found = _UID.findall(stem)
    return int(found[-1]) if found else None


def without_uid(stem: str) -> str:
    return _UID.sub("", stem)


def vsize_in(stem: str) -> int | None:
    m = _VSIZE.search(stem)
    return int(m.group(1)) if m else None


def bits_of_letters(info: str) -> int:
    bits = 0
    for c in info:
        bits |= _LETTER_BIT.get(c, 0)
    return bits


def letters_of_bits(bits: int) -> str:
    return "".join(c for c, b in LETTERS if bits & b)


def parse_flags(flags: Iterable[str]) -> tuple[int, frozenset[str]]:
    """(bitmask, keywords) for IMAP FLAGS; system flags are case-insensitive, \\Recent is ignored."""
    bits = 0
    kws: set[str] = set()
    for f in flags:
        c = _CANON.get(f.lower(), f)
        if c == "\\Recent":
            continue  # RFC 3501 §2.3.2: \Recent cannot be stored
        b = FLAG_BITS.get(c)
        if b:
            bits |= b
        elif c.startswith("\\"):
            raise ValueError(f"unknown system flag {f}")
        else:
            kws.add(c)
    return bits, frozenset(kws)


_flag_cache: dict[tuple[int, str], tuple[str, ...]] = {}


def flag_tuple(bits: int, keywords: str) -> tuple[str, ...]:
    """The IMAP flags of an index row (memoised: a mailbox has few distinct combinations)."""
    key = (bits, keywords)
    got = _flag_cache.get(key)
    if got is None:
        got = tuple(f for f, b in FLAG_BITS.items() if bits & b) + tuple(keywords.split())
        if len(_flag_cache) < 65536:
            _flag_cache[key] = got
    return got


def join_keywords(kws: Iterable[str]) -> str:
    return " ".join(sorted(kws))
