"""Modified UTF-7 (RFC 3501 §5.1.3): the RFC's example, round trips, and every malformed form refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.access.imapproto import mutf7


def test_rfc3501_example() -> None:
    name = "~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e"
    assert mutf7.encode(name) == b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert mutf7.decode(b"~peter/mail/&U,BTFw-/&ZeVnLIqe-") == name


@pytest.mark.parametrize(("text", "wire"), [
    ("&", b"&-"), ("a&b", b"a&-b"), ("", b""), ("INBOX", b"INBOX"), ("Entw\u00fcrfe", b"Entw&APw-rfe"),
    ("\u263a!", b"&Jjo-!"), ("\U0001f600", b"&2D3eAA-"), ("a\x7fb", b"a&AH8-b"), ("\u00e9/x", b"&AOk-/x"),
    ("\u00e9\u00e8", b"&AOkA6A-"),
])
def test_known_encodings(text: str, wire: bytes) -> None:
    assert mutf7.encode(text) == wire
    assert mutf7.decode(wire) == text


@pytest.mark.parametrize("wire", [
    b"&Jjo!",            # RFC 3501: unterminated shift
    b"&U,BTFw",          # no "-" at the end
    b"&",                # lone "&"
    b"a&b",              # "&" must be "&-"
    b"&AGE-",            # encodes "a", printable ASCII that must represent itself
    b"&ACY-",            # encodes "&" itself
    b"&U,BTFw-&ZeVnLIqe-",  # two adjacent shifts: the canonical form merges them
    b"&U,BTFx-",         # non-zero padding bits
    b"&2D0-",            # lone high surrogate
    b"&3gA-",            # lone low surrogate
    b"&AO-",             # a partial UTF-16 unit
    b"&A-",              # one base64 character is never a whole octet
    b"&AOk=-",           # padding is not allowed
    b"&AO/-",            # "/" is "," in modified BASE64
    b"caf\xc3\xa9",      # raw 8-bit
    b"a\tb",             # control character
])
def test_malformed_is_refused_without_traceback(wire: bytes) -> None:
    with pytest.raises(mutf7.MUTF7Error):
        mutf7.decode(wire)


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_categories=["Cs"])))
def test_round_trip(text: str) -> None:
    wire = mutf7.encode(text)
    assert all(0x20 <= b <= 0x7E for b in wire)
    assert mutf7.decode(wire) == text


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40) | st.text("&-ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123456789+,/=a", max_size=20).map(str.encode))
def test_decode_either_refuses_or_is_canonical(wire: bytes) -> None:
    try:
        text = mutf7.decode(wire)
    except mutf7.MUTF7Error:
        return
    assert mutf7.encode(text) == wire
