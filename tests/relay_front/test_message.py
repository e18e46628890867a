"""Header changes on raw bytes: nothing but the named fields changes."""

from __future__ import annotations

from appliance.message import Message, add_missing_ids, received, strip_bcc
from appliance.policy.verdicts import translate


def test_bcc_removed_with_its_continuation_lines_and_body_untouched() -> None:
    raw = (b"From: a@example.test\r\nBcc: x@remote.test,\r\n y@remote.test\r\nSubject: s\r\n"
           b"resent-bcc: z@remote.test\r\n\r\nBcc: in the body stays\r\n")
    m = Message.parse(raw)
    assert strip_bcc(m) == 2
    assert m.to_bytes() == b"From: a@example.test\r\nSubject: s\r\n\r\nBcc: in the body stays\r\n"


def test_existing_ids_kept_missing_ones_added() -> None:
    m = Message.parse(b"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\nSubject: s\r\n\r\nx\r\n")
    add_missing_ids(m, "mx.example.test")
    assert m.header_values("Date") == ["Mon, 30 Nov 2026 10:00:00 +0000"]
    assert m.header_values("Message-ID")[0].endswith("@mx.example.test>")


def test_received_never_copies_an_odd_helo() -> None:
    value = received(helo="x\r\nBcc: evil", client_ip="192.0.2.1", hostname="mx.example.test", with_="ESMTP",
                     recipients=["a@example.test", "b@example.test"])
    assert value.startswith("from unknown ([192.0.2.1])") and "evil" not in value and " for " not in value


def test_aiosmtpd_replies_get_enhanced_codes() -> None:
    assert translate("500 Error: (RuntimeError) boom") == "451 4.3.0 Internal error; try again later"
    assert translate("530 Must issue a STARTTLS command first").startswith("530 5.7.0")
    assert translate("250 2.1.0 Ok") == "250 2.1.0 Ok"
