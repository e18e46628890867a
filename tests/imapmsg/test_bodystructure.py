"""BODY / BODYSTRUCTURE (RFC 9051 §7.5.2) over concrete MIME trees."""

from __future__ import annotations

from pathlib import Path

from services.access.imapmsg import bodystructure

CORPUS = Path(__file__).parent / "corpus"


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def test_missing_content_type_defaults_to_text_plain_us_ascii() -> None:
    # RFC 2045 §5.2; size counts CRLF octets, lines count line breaks.
    msg = crlf("Subject: x\n\njust text\ntwo lines\n")
    assert bodystructure(msg, True) == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 22 2 NIL NIL NIL NIL)'
    assert bodystructure(msg, False) == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 22 2)'


def test_text_without_charset_gets_the_default_charset_after_its_params() -> None:
    msg = crlf("Content-Type: text/plain; format=flowed\n\nx\n")
    assert bodystructure(msg, False) == b'("text" "plain" ("format" "flowed" "charset" "us-ascii") NIL NIL "7bit" 3 1)'


def test_nested_mixed_with_rfc822_containing_alternative() -> None:
    msg = (CORPUS / "17-nested-rfc822-alternative.eml").read_bytes()
    assert bodystructure(msg, True) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 26 0 NIL NIL NIL NIL)'
        b'("message" "rfc822" NIL NIL NIL "7bit" 395 ("Tue, 1 Dec 2026 10:00:00 +0100" "inner message" '
        b'(("Inner Sender" NIL "inner" "example.org")) (("Inner Sender" NIL "inner" "example.org")) '
        b'(("Inner Sender" NIL "inner" "example.org")) (("Inner, Rcpt" NIL "rcpt" "example.org")) NIL NIL NIL '
        b'"<inner@example.org>") (("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 11 0 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "utf-8") NIL NIL "7bit" 17 0 NIL NIL NIL NIL) "alternative" '
        b'("boundary" "inner") NIL NIL NIL) 17 NIL ("inline" NIL) NIL NIL)'
        b'("image" "png" ("name" "x.png") NIL NIL "base64" 12 NIL NIL NIL NIL) "mixed" ("boundary" "outer") '
        b'NIL NIL NIL)')


def test_multipart_extension_data() -> None:
    msg = (CORPUS / "15-multipart-mixed.eml").read_bytes()
    out = bodystructure(msg, True)
    assert out.endswith(b' "mixed" ("boundary" "XXX" "foo" "bar") NIL ("en" "de") "http://example.com/msg")')
    assert (b'("application" "octet-stream" ("name" "data.bin") "<part2@example.com>" "some binary data" "base64" 352 '
            b'NIL ("attachment" ("filename" "data.bin" "size" "12")) ("fr") "data.bin")') in out
    assert bodystructure(msg, False).endswith(b' "mixed")')


def test_digest_parts_default_to_message_rfc822() -> None:
    # RFC 2046 §5.1.5
    msg = (CORPUS / "18-digest.eml").read_bytes()
    out = bodystructure(msg, False)
    assert out.startswith(b'(("message" "rfc822" NIL NIL NIL "7bit" 61 (NIL "first in digest" ')
    assert b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 18 0) "digest")' in out


def test_rfc2231_continuations_are_joined_but_stay_encoded() -> None:
    msg = (CORPUS / "19-rfc2231.eml").read_bytes()
    out = bodystructure(msg, True)
    assert b'("title*" "us-ascii\'en\'This%20is%20even%20more%20%2A%2A%2Afun%2A%2A%2A%20isn\'t it!")' in out
    assert b'("attachment" ("filename*" "UTF-8\'\'%E2%82%AC%20rates.txt"))' in out


def test_content_md5_is_reported_and_case_is_kept() -> None:
    msg = (CORPUS / "29-uppercase-params.eml").read_bytes()
    assert bodystructure(msg, True) == (
        b'("TEXT" "HTML" ("CHARSET" "UTF-8" "Format" "Flowed" "DelSp" "Yes") "<ID@EXAMPLE>" NIL "7BIT" 16 1 '
        b'"Q2hlY2sgSW50ZWdyaXR5IQ==" ("INLINE" ("FILENAME" "A.HTML")) NIL NIL)')


def test_plain_us_ascii_root_is_canonical_lower_case() -> None:
    msg = crlf("Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\n\nx\n")
    assert bodystructure(msg, False) == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 1)'


def test_multipart_without_boundary_or_parts_shows_one_empty_text_part() -> None:
    for name in ("31-multipart-no-boundary.eml", "32-empty-multipart.eml"):
        out = bodystructure((CORPUS / name).read_bytes(), False)
        assert out.startswith(b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "mixed")'), name


def test_missing_final_boundary_ends_the_part_at_the_end() -> None:
    out = bodystructure((CORPUS / "20-missing-final-boundary.eml").read_bytes(), False)
    assert out == (b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0)'
                   b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 22 1) "mixed")')


def test_invalid_content_type_is_an_opaque_part() -> None:
    msg = crlf("Content-Type: foo bar/baz\n\nx\n")
    assert bodystructure(msg, False) == b'("" "" NIL NIL NIL "7bit" 3)'


def test_bare_lf_is_counted_as_crlf() -> None:
    assert bodystructure(b"Subject: x\n\nline one\nline two\n", False) == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 20 2)')


def test_message_global_is_encapsulated_only_for_imap4rev2() -> None:
    msg = (CORPUS / "25-message-global.eml").read_bytes()
    assert bodystructure(msg, False) == b'(("message" "global" NIL NIL NIL "7bit" 69) "mixed")'
    rev2 = bodystructure(msg, False, rev2=True)
    assert rev2.startswith(b'(("message" "global" NIL NIL NIL "7bit" 69 (NIL {7}\r\nGr\xc3\xbc\xc3\x9fe ')
    assert rev2.endswith(b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 16 0) 3) "mixed")')


def test_rfc3501_section_7_4_2_example_body() -> None:
    # RFC 3501 §7.4.2's BODY example, rebuilt as a message whose parts have those sizes.
    text = "".join("x" * (48 if i else 50) + "\r\n" for i in range(23))  # 1152 octets, 23 lines
    b64 = "".join("Y" * (60 if i else 88) + "\r\n" for i in range(73))  # 4554 octets, 73 lines
    assert (len(text), len(b64)) == (1152, 4554)
    msg = ("MIME-Version: 1.0\r\nContent-Type: MULTIPART/MIXED; BOUNDARY=\"b\"\r\n\r\n--b\r\n"
           "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\nContent-Transfer-Encoding: 7BIT\r\n\r\n" + text +
           "\r\n--b\r\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII; NAME=cc.diff\r\n"
           "Content-ID: <960723163407.20117h@cac.washington.edu>\r\nContent-Description: Compiler diff\r\n"
           "Content-Transfer-Encoding: BASE64\r\n\r\n" + b64 + "\r\n--b--\r\n").encode()
    assert bodystructure(msg, False) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23)("TEXT" "PLAIN" ("CHARSET" "US-ASCII" '
        b'"NAME" "cc.diff") "<960723163407.20117h@cac.washington.edu>" "Compiler diff" "BASE64" 4554 73) "MIXED")')
