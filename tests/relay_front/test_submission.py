"""Ports 587 and 465 with swaks: AUTH only over TLS, owned identities only, Bcc stripped, DKIM, size."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest

from appliance.accounts import AccountStore
from tests.relay_front.conftest import MAX_RCPTS, MAX_SIZE, swaks, write
from tests.relay_front.relay import AUTH_PLAIN_ALICE, PASSWORD, RawSMTP, Relay, client_tls

pytestmark = pytest.mark.peers


def _dkim_dns(relay: Relay) -> Callable[..., bytes]:
    record = (relay.dir / "etc/dkim/mail.txt").read_text()
    txt = re.search(r'"(.*)"', record).group(1).encode()  # type: ignore[union-attr]

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"mail._domainkey.example.test."
        return txt

    return dnsfunc


def test_starttls_auth_plain_delivers_signed_copy_without_bcc(relay: Relay, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    msg = write(tmp_path / "m.eml", f"""From: Alice <alice@example.test>
To: alice@example.test
Bcc: hidden@example.test, other@remote.test
Subject: hello {marker}

Body {marker}
""")
    out = swaks(relay, "--from", "alice@example.test", "--to", "alice@example.test", "--data", f"@{msg}", check=True)
    assert re.search(r"250[- ]AUTH PLAIN LOGIN", out.stdout)
    assert re.search(r"250 2\.0\.0 Ok: queued as \S+", out.stdout)
    delivered = relay.find_delivered("alice@example.test", marker.encode())  # Maildir: LF line ends
    headers = delivered.split(b"\n\n", 1)[0]
    assert b"\nBcc:" not in headers and b"hidden@example.test" not in delivered
    assert b"Received: from " in headers and b"with ESMTPSA" in headers
    # Date and Message-ID were missing and have been added.
    assert re.search(rb"\nDate: ", headers) and re.search(rb"\nMessage-ID: <[0-9a-f]+@mx\.example\.test>", headers)
    # The DKIM signature verifies against the published key (dkimpy as the verifier).
    signed = delivered[delivered.index(b"DKIM-Signature:"):].replace(b"\n", b"\r\n")
    assert dkim.verify(signed, dnsfunc=_dkim_dns(relay))


def test_implicit_tls_auth_login(relay: Relay) -> None:
    marker = uuid.uuid4().hex
    out = swaks(relay, "--from", "sales@example.test", "--to", "alice@example.test", "--header",
                f"Subject: {marker}", "--header", "From: Sales <sales@example.test>", "--auth", "LOGIN",
                "--auth-user", "alice@example.test", "--auth-password", PASSWORD,
                listener="submissions", tls="--tls-on-connect", auth=False, check=True)
    assert "235 2.7.0" in out.stdout
    relay.find_delivered("alice@example.test", marker.encode())


def test_auth_refused_before_tls(relay: Relay) -> None:
    c = RawSMTP("127.0.0.1", relay.port("submission"))
    try:
        ehlo = c.cmd("EHLO client.test")
        assert "STARTTLS" in ehlo and "AUTH" not in ehlo
        assert c.cmd(AUTH_PLAIN_ALICE).startswith("530 5.7.0")
        assert c.cmd("MAIL FROM:<alice@example.test>").startswith("530 5.7.0")
    finally:
        c.close()
    # swaks refuses to continue too: the server did not offer AUTH without TLS.
    swaks(relay, "--from", "alice@example.test", "--to", "alice@example.test", tls=None, check=False)


def test_wrong_password_and_no_auth(relay: Relay) -> None:
    out = swaks(relay, "--from", "alice@example.test", "--to", "alice@example.test", password="wrong password!",
                check=False)
    assert "535 5.7.8" in out.stdout
    out = swaks(relay, "--from", "alice@example.test", "--to", "alice@example.test", auth=False, check=False)
    assert "530 5.7.0" in out.stdout


def test_forged_envelope_sender_refused(relay: Relay) -> None:
    out = swaks(relay, "--from", "bob@example.test", "--to", "alice@example.test", check=False)
    assert re.search(r"MAIL FROM:<bob@example.test>\s*\n<~?\* +550 5\.7\.1", out.stdout), out.stdout
    out = swaks(relay, "--from", "<>", "--to", "alice@example.test", check=False)
    assert "550 5.7.1" in out.stdout


def test_forged_from_header_refused(relay: Relay) -> None:
    before = len(relay.delivered("alice@example.test"))
    out = swaks(relay, "--from", "alice@example.test", "--to", "alice@example.test",
                "--header", "From: The Boss <bob@example.test>", check=False)
    assert re.search(r"<~?\* +550 5\.7\.1 From: address bob@example\.test", out.stdout), out.stdout
    out = swaks(relay, "--from", "alice@example.test", "--to", "alice@example.test",
                "--header", "Sender: bob@example.test", check=False)
    assert "550 5.7.1" in out.stdout
    assert len(relay.delivered("alice@example.test")) == before


def test_oversize_refused_and_size_advertised(relay: Relay, tmp_path: Path) -> None:
    big = write(tmp_path / "big.eml", "From: alice@example.test\nSubject: big\n\n" + ("x" * 70 + "\n") * 400)
    out = swaks(relay, "--from", "alice@example.test", "--to", "alice@example.test", "--data", f"@{big}", check=False)
    assert f"250-SIZE {MAX_SIZE}" in out.stdout
    assert "552 5.3.4" in out.stdout
    c = RawSMTP("127.0.0.1", relay.port("submission"))
    try:
        c.cmd("EHLO client.test")
        assert c.cmd("STARTTLS").startswith("220")
        c.starttls(client_tls(relay))
        c.cmd("EHLO client.test")
        assert c.cmd(AUTH_PLAIN_ALICE).startswith("235")
        assert c.cmd(f"MAIL FROM:<alice@example.test> SIZE={MAX_SIZE + 1}").startswith("552 5.3.4")
        # The session is still usable; MAIL's AUTH= parameter (RFC 4954 5) is accepted.
        assert c.cmd("MAIL FROM:<alice@example.test> AUTH=<> SIZE=100").startswith("250")
    finally:
        c.close()


def test_recipient_cap_and_relaying_for_customers(relay: Relay) -> None:
    c = RawSMTP.implicit_tls("127.0.0.1", relay.port("submissions"), client_tls(relay))
    try:
        assert c.greeting.startswith("220")
        c.cmd("EHLO client.test")
        assert c.cmd(AUTH_PLAIN_ALICE).startswith("235")
        assert c.cmd("MAIL FROM:<alice@example.test>").startswith("250")
        # Authenticated customers may address any domain; routing decides later.
        assert c.cmd("RCPT TO:<someone@remote.test>").startswith("250")
        for i in range(MAX_RCPTS - 1):
            assert c.cmd(f"RCPT TO:<r{i}@remote.test>").startswith("250")
        assert c.cmd("RCPT TO:<one-too-many@remote.test>").startswith("452 4.5.3")
        # Open-relay address tricks are refused even for customers.
        assert c.cmd("RSET").startswith("250")
        assert c.cmd("MAIL FROM:<alice@example.test>").startswith("250")
        for trick in ("user%remote.test@example.test", "remote.test!user@example.test",
                      "@example.test:user@remote.test", '"user@remote.test"@example.test'):
            assert c.cmd(f"RCPT TO:<{trick}>").startswith("553 5.1.3"), trick
        assert c.cmd("RCPT TO:<nobody-here@example.test>").startswith("550 5.1.1")
    finally:
        c.close()


def test_account_disabled_mid_session_refused_at_next_mail(relay: Relay) -> None:
    auth_bob = "AUTH PLAIN " + base64.b64encode(f"\0bob@example.test\0{PASSWORD}".encode()).decode()
    c = RawSMTP.implicit_tls("127.0.0.1", relay.port("submissions"), client_tls(relay))
    store = AccountStore(relay.cfg.paths.accounts_db)
    try:
        c.cmd("EHLO client.test")
        assert c.cmd(auth_bob).startswith("235")
        assert c.cmd("MAIL FROM:<bob@example.test>").startswith("250")
        assert c.cmd("RSET").startswith("250")
        store.set_disabled("bob@example.test", True)
        assert c.cmd("MAIL FROM:<bob@example.test>").startswith("550 5.7.1")
    finally:
        store.set_disabled("bob@example.test", False)
        store.close()
        c.close()
