"""DATA decoded and hashed as it streams: the same result as the whole-message algorithms, in any chunking."""

from __future__ import annotations

import base64
import hashlib

import dkim
from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.message import CARRY_MAX, DkimSigner, HeaderCollector, Message, RelaxedBodyHash
from services.relay.data import MAX_HELD, DataDecoder

LINES = st.lists(
    st.sampled_from([b"", b".", b"..", b".x", b"x.", b" ", b"\t", b"a  b", b"a \t", b"  ", b"text", b"\xc3\xa9",
                     b"x" * 300]),
    max_size=30,
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return [c for c in out if c] or [b""]


def decode_all(wire: bytes, cuts: list[int]) -> tuple[bytes, DataDecoder, bytes]:
    """Feed WIRE in pieces until the end of the data; (message, decoder, bytes left for the command loop)."""
    dec = DataDecoder()
    out = b""
    pieces = chunked(wire, cuts)
    for i, c in enumerate(pieces):
        out += dec.feed(c)
        if dec.done:
            return out, dec, dec.rest + b"".join(pieces[i + 1:])
    return out, dec, b""


@settings(max_examples=100, deadline=None)
@given(LINES, st.lists(st.integers(0, 20_000), max_size=8), st.binary(max_size=20))
def test_decoder_unstuffs_like_rfc5321_in_any_chunking(lines: list[bytes], cuts: list[int], after: bytes) -> None:
    message = b"".join(line + b"\r\n" for line in lines)
    # RFC 5321 4.5.2: the client doubles a leading dot; the server removes it.
    stuffed = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    wire = stuffed + b".\r\n" + after
    out, dec, left = decode_all(wire, cuts)
    assert dec.done and out == message and not dec.bare_newline and left == after


@settings(max_examples=100, deadline=None)
@given(LINES, st.sampled_from([b"\n", b"\r", b"\n.\n", b"\r.\r", b"x\ny"]), st.lists(st.integers(0, 5000), max_size=6))
def test_bare_cr_or_lf_is_found_and_never_ends_the_data(lines: list[bytes], bad: bytes, cuts: list[int]) -> None:
    body = b"".join(line + b"\r\n" for line in lines if not line.startswith(b"."))
    wire = body + b"a" + bad + b"b\r\n.\r\nQUIT\r\n"
    _out, dec, left = decode_all(wire, cuts)
    assert dec.done and dec.bare_newline and left == b"QUIT\r\n"


def test_long_line_is_given_out_not_held() -> None:
    dec = DataDecoder()
    out = dec.feed(b"Subject: x\r\n\r\n" + b"y" * (MAX_HELD * 4))
    assert len(out) >= MAX_HELD * 4  # memory stays bounded: the unfinished line is not kept back
    assert dec.feed(b"\r\n.\r\n") == b"\r\n" and dec.done


@settings(max_examples=100, deadline=None)
@given(LINES, st.lists(st.integers(0, 200_000), max_size=8), st.booleans())
def test_relaxed_body_hash_matches_dkimpy(lines: list[bytes], cuts: list[int], huge: bool) -> None:
    body = b"".join(line + b"\r\n" for line in lines)
    if huge:  # a line longer than the carry limit, ending in blanks
        body += b"z" * (CARRY_MAX + 10) + b" \t  \r\n" + b"   " * CARRY_MAX + b"\r\n\r\n"
    h = RelaxedBodyHash()
    for c in chunked(b"\r\n" + body, cuts):
        h.update(c)
    assert h.digest() == hashlib.sha256(Relaxed.canonicalize_body(body)).digest()


def test_header_collector_splits_and_caps() -> None:
    hc = HeaderCollector(limit=100)
    assert hc.feed(b"From: a@example.test\r\nSubj") is None
    assert hc.feed(b"ect: s\r\n\r\nbody\r\n") == b"\r\nbody\r\n"
    assert hc.message is not None and hc.message.header_values("Subject") == ["s"]
    assert hc.feed(b"more") == b"more"
    big = HeaderCollector(limit=100)
    assert big.feed(b"X-A: " + b"a" * 200 + b"\r\nX-B: b\r\n") is None and big.too_big
    # A line that is not a header field ends the header section even without an empty line.
    odd = HeaderCollector(limit=100)
    assert odd.feed(b"From: a@example.test\r\nnot a header\r\n" + b"x" * 200) is not None
    assert odd.message is not None and len(odd.message.fields) == 1


def test_streamed_dkim_signature_verifies_with_dkimpy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    signer = DkimSigner("s1", pem, ["example.test"])
    head = b"From: Alice <alice@example.test>\r\nTo: b@remote.test\r\nSubject:  hello   there\r\n"
    body = b"\r\nline one  \r\n\tindented\r\n\r\n\r\n"
    msg = Message.parse(head + body)
    tap = signer.body_hash(msg, body[:2])
    assert tap is not None
    for i in range(0, len(body), 3):
        tap.update(body[i:i + 3])
    assert signer.sign_headers(msg, tap.digest())
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(pub)
    assert dkim.verify(msg.header_block() + body, dnsfunc=lambda name, timeout=5: record)
    # A changed body no longer verifies: the hash is really of this body.
    assert not dkim.verify(msg.header_block() + body.replace(b"one", b"two"), dnsfunc=lambda name, timeout=5: record)
