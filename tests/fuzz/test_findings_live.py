"""What the fuzzers found, checked against a running relay: a malformed path is refused as such (5xx).

Before the fix the email package's parser raised IndexError/AttributeError inside
aiosmtpd, and the relay answered ``451 4.3.0 Internal error`` (a temporary error
the client would retry for days) instead of refusing the malformed address
(``553 5.1.3``, as aiosmtpd does for any path it cannot parse, RFC 5321 4.2.2).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.relay_front.relay import RawSMTP, Relay, make_relay

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    r = make_relay(Path(tmp_path_factory.mktemp("fuzzfindings")))
    r.start()
    yield r
    r.stop()


@pytest.mark.parametrize("path", ["<", "<a@[t\ufffd\ufffd]>", " <"])
def test_malformed_mail_from_is_refused_not_an_internal_error(relay: Relay, path: str) -> None:
    c = RawSMTP("127.0.0.1", relay.port("mx"))  # a member, so MAIL is parsed at all
    try:
        assert c.greeting.startswith("220"), c.greeting
        assert c.cmd("EHLO peer.test").startswith("250")
        reply = c.cmd(f"MAIL FROM:{path}")
        assert reply[:3] in ("501", "553"), reply
        assert c.cmd("MAIL FROM:<someone@remote.test>").startswith("250")  # the session goes on
    finally:
        c.close()
