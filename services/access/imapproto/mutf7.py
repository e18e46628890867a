"""Modified UTF-7 for mailbox names (RFC 3501 §5.1.3).

Printable US-ASCII (0x20-0x7E) other than "&" stands for itself; "&" is written "&-"; every run
of other characters is "&" + modified BASE64 (RFC 2045 alphabet with "," for "/", no "=" padding)
of the UTF-16BE text + "-".  Decoding accepts only the canonical form the encoder produces, so
one name has one spelling: the RFC says modified BASE64 "MUST NOT be used to represent any
printing US-ASCII character which can represent itself", and a shift must be terminated.
"""

from __future__ import annotations

import base64
import binascii
import re

# A shifted run: "&" then modified-base64 characters then "-" (RFC 3501 §5.1.3).
_SHIFT = re.compile(rb"&([A-Za-z0-9+,]*)-")
_PRINTABLE = re.compile(r"[\x20-\x25\x27-\x7e]+")  # represents itself (no "&")
_NON_PRINTABLE = re.compile(r"[^\x20-\x7e]+")  # a run that goes into one shifted sequence
_ASCII_PRINTABLE_BYTES = re.compile(rb"[\x20-\x7e]*\Z")


class MUTF7Error(ValueError):
    """A name that is not canonical modified UTF-7."""


def encode(name: str) -> bytes:
    """Encode NAME as modified UTF-7 (canonical form: maximal runs of non-printable characters)."""
    out: list[bytes] = []
    i, n = 0, len(name)
    while i < n:
        m = _PRINTABLE.match(name, i)
        if m:
            out.append(m.group().encode("ascii"))
            i = m.end()
            continue
        if name[i] == "&":
            out.append(b"&-")
            i += 1
            continue
        run = _NON_PRINTABLE.match(name, i)
        assert run is not None  # name[i] is neither printable ASCII nor "&"
        raw = run.group().encode("utf-16-be", "surrogatepass")
        out.append(b"&" + base64.b64encode(raw).rstrip(b"=").replace(b"/", b",") + b"-")
        i = run.end()
    return b"".join(out)


def decode(data: bytes) -> str:
    """Decode modified UTF-7; MUTF7Error for anything that is not the canonical encoding."""
    if not _ASCII_PRINTABLE_BYTES.match(data):
        raise MUTF7Error("mailbox name has characters outside printable US-ASCII (RFC 3501 §5.1.3)")
    if b"&" not in data:
        return data.decode("ascii")
    parts: list[str] = []
    pos = 0
    for m in _SHIFT.finditer(data):
        plain = data[pos:m.start()]
        if b"&" in plain:
            raise MUTF7Error("unterminated modified UTF-7 shift")
        parts.append(plain.decode("ascii"))
        b64 = m.group(1)
        if not b64:
            parts.append("&")
        else:
            parts.append(_decode_run(b64))
        pos = m.end()
    rest = data[pos:]
    if b"&" in rest:
        raise MUTF7Error("unterminated modified UTF-7 shift")
    parts.append(rest.decode("ascii"))
    text = "".join(parts)
    # Canonical form only: re-encoding must give back the same octets.  This rejects encoded
    # printable ASCII, adjacent shifts, non-zero padding bits and other alternative spellings.
    if encode(text) != data:
        raise MUTF7Error("non-canonical modified UTF-7")
    return text


def _decode_run(b64: bytes) -> str:
    if len(b64) % 4 == 1:
        raise MUTF7Error("bad modified BASE64 length")
    padded = b64.replace(b",", b"/") + b"=" * (-len(b64) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MUTF7Error("bad modified BASE64") from e
    if len(raw) % 2:
        raise MUTF7Error("modified BASE64 does not hold whole UTF-16 units")
    try:
        return raw.decode("utf-16-be")  # strict: a lone surrogate is an error
    except UnicodeDecodeError as e:
        raise MUTF7Error("bad UTF-16 in modified UTF-7") from e
