"""BODY[section]<partial> and BINARY[section] (RFC 9051 §6.4.5, RFC 3516)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.access.imapmsg import Message, binary, binary_size, partial, section
from services.access.imapproto.types import Section

CORPUS = Path(__file__).parent / "corpus"


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


NESTED = (CORPUS / "17-nested-rfc822-alternative.eml").read_bytes()


def test_whole_header_text() -> None:
    msg = crlf("Subject: s\nFrom: a@b.c\n\nbody\n")
    assert section(msg, Section()) == msg
    assert section(msg, Section(text="HEADER")) == b"Subject: s\r\nFrom: a@b.c\r\n\r\n"
    assert section(msg, Section(text="TEXT")) == b"body\r\n"


def test_part_one_of_a_non_multipart_is_its_body() -> None:
    msg = crlf("Subject: s\n\nbody\n")
    assert section(msg, Section(part=(1,))) == b"body\r\n"
    assert section(msg, Section(part=(2,))) is None
    assert section(msg, Section(part=(1, 1))) is None


def test_part_one_of_a_leaf_inside_a_multipart_is_that_leaf() -> None:
    assert section(NESTED, Section(part=(1, 1))) == b"See the forwarded message."
    assert section(NESTED, Section(part=(1, 1, 1))) is None


def test_parts_of_nested_multipart_and_message() -> None:
    assert section(NESTED, Section(part=(1,))) == b"See the forwarded message."
    assert section(NESTED, Section(part=(1,), text="MIME")) == b"Content-Type: text/plain\r\n\r\n"
    inner = section(NESTED, Section(part=(2,)))
    assert inner is not None and inner.startswith(b"Date: Tue, 1 Dec 2026") and inner.endswith(b"--inner--\r\n")
    # HEADER and TEXT of a message/rfc822 part are those of the encapsulated message.
    hdr = section(NESTED, Section(part=(2,), text="HEADER"))
    assert hdr is not None and hdr.startswith(b"Date: Tue") and hdr.endswith(b'boundary="inner"\r\n\r\n')
    assert section(NESTED, Section(part=(2,), text="MIME")) == (
        b"Content-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n")
    # 2.1 and 2.2 are the parts of the multipart/alternative inside the message.
    assert section(NESTED, Section(part=(2, 1))) == b"inner plain"
    assert section(NESTED, Section(part=(2, 2), text="MIME")) == b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    assert section(NESTED, Section(part=(2, 3))) is None
    assert section(NESTED, Section(part=(3,))) == b"iVBORw0KGgo="
    # HEADER of a part that is not a message exists but is empty.
    assert section(NESTED, Section(part=(1,), text="HEADER")) == b""


def test_header_fields_keep_folding_duplicates_and_order() -> None:
    msg = crlf("Received: a\nX-Custom: first\nSubject: s\nX-Custom: second\n folded\nreceived: b\n\nbody\n")
    got = section(msg, Section(text="HEADER.FIELDS", fields=("x-custom", "RECEIVED")))
    assert got == b"Received: a\r\nX-Custom: first\r\nX-Custom: second\r\n folded\r\nreceived: b\r\n\r\n"
    assert section(msg, Section(text="HEADER.FIELDS.NOT", fields=("x-custom", "received"))) == b"Subject: s\r\n\r\n"
    assert section(msg, Section(text="HEADER.FIELDS", fields=("nosuch",))) == b"\r\n"


def test_header_fields_of_encapsulated_message() -> None:
    assert section(NESTED, Section(part=(2,), text="HEADER.FIELDS", fields=("subject",))) == (
        b"Subject: inner message\r\n\r\n")


def test_partial() -> None:
    value = b"0123456789"
    assert partial(value, 2, 3) == b"234"
    assert partial(value, 8, 10) == b"89"
    assert partial(value, 20, 5) == b""


def test_binary_base64_and_quoted_printable() -> None:
    msg = (CORPUS / "15-multipart-mixed.eml").read_bytes()
    assert binary(msg, Section(part=(1,))) == "Grüße, softbreak".encode()
    assert binary(msg, Section(part=(2,))) == bytes(range(256))
    assert binary_size(msg, Section(part=(2,))) == 256
    qp = crlf("Content-Transfer-Encoding: quoted-printable\n\nCaf=E9 =\nx  \ny=3D\n")
    assert binary(qp, Section(part=(1,))) == b"Caf\xe9 x\r\ny=\r\n"


def test_binary_of_whole_message_marks_parts_binary() -> None:
    msg = crlf("Content-Type: text/plain\nContent-Transfer-Encoding: base64\nX: y\n\naGVsbG8=\n")
    assert binary(msg, Section()) == b"Content-Type: text/plain\r\nX: y\r\nContent-Transfer-Encoding: binary\r\n\r\nhello"


def test_binary_unknown_cte_is_none_for_the_server_to_refuse() -> None:
    msg = (CORPUS / "28-unknown-cte.eml").read_bytes()
    assert binary(msg, Section(part=(1,))) is None  # NO [UNKNOWN-CTE] (RFC 3516 §4.3)
    assert binary_size(msg, Section(part=(1,))) is None
    assert binary(msg, Section(part=(2,))) == "eight bit: Grüße".encode()
    assert binary(msg, Section()) is None


def test_binary_of_missing_part_is_empty() -> None:
    assert binary(crlf("Subject: s\n\nx\n"), Section(part=(4,))) == b""


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.eml")))
def test_binary_size_is_the_length_of_binary(name: str) -> None:
    m = Message((CORPUS / name).read_bytes())
    for part in [(), *[(i,) for i in range(1, 4)]]:
        sec = Section(part=part)
        got = m.binary(sec)
        assert m.binary_size(sec) == (None if got is None else len(got))


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.eml")))
def test_sections_are_slices_of_the_message(name: str) -> None:
    data = (CORPUS / name).read_bytes()
    m = Message(data)
    for part in m.tree.walk():
        assert 0 <= part.start <= part.body_start <= part.end <= len(m.data)
        assert m.data[part.start : part.body_start].count(b"\n") >= 0
