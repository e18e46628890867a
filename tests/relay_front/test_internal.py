"""The internal submission socket: SO_PEERCRED, XUSER, XAUTHCHECK/XAUTHFAIL, same policy as port 587."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from appliance.submitclient import SubmitClient
from tests.relay_front.relay import RawSMTP, Relay

pytestmark = pytest.mark.peers

_PEEK = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
print(s.recv(512).decode().strip())
"""


@pytest.mark.root
def test_wrong_uid_refused(relay: Relay) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root to run a client as another user (setpriv)")
    sock = str(relay.cfg.paths.internal_socket)
    out = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-c", _PEEK, sock],
        capture_output=True, text=True, timeout=30,
    )
    assert out.stdout.startswith("554 5.7.1"), out.stdout + out.stderr
    assert "uid 65534" in out.stdout
    # The allowed uid (root here, relay.internal_allowed_uids) gets the internal banner.
    c = RawSMTP.unix(sock)
    assert c.greeting.startswith("220 ") and c.greeting.endswith("ESMTP internal")
    c.close()


def test_xuser_then_same_rules_as_submission(relay: Relay) -> None:
    c = RawSMTP.unix(relay.cfg.paths.internal_socket)
    try:
        ehlo = c.cmd("EHLO access")
        assert "XUSER" in ehlo and "XAUTHFAIL" in ehlo and "AUTH " not in ehlo
        assert c.cmd("MAIL FROM:<alice@example.test>").startswith("530 5.7.0")
        assert c.cmd("AUTH PLAIN AGFAYgBj").startswith("503 5.5.1")
        assert c.cmd("XUSER alice@example.test not-an-ip IMAP").startswith("501")
        assert c.cmd("XUSER nobody@example.test 203.0.113.5 IMAP").startswith("550 5.7.1")
        assert c.cmd("XUSER alice@example.test 203.0.113.5 IMAP") == "250 2.0.0 alice@example.test"
        assert c.cmd("XUSER bob@example.test 203.0.113.5 IMAP").startswith("503")
        # Forged envelope sender and forged From: are refused just as on port 587.
        assert c.cmd("MAIL FROM:<bob@example.test>").startswith("550 5.7.1")
        assert c.cmd("MAIL FROM:<alice@example.test>").startswith("250")
        assert c.cmd("RCPT TO:<bob@example.test>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        c.send(b"From: bob@example.test\r\nSubject: forged\r\n\r\nx\r\n.\r\n")
        assert c.reply().startswith("550 5.7.1")
    finally:
        c.close()


def test_access_service_client_submits(relay: Relay) -> None:
    """The access service's own client (appliance.submitclient) against the relay: queued, delivered, signed."""
    marker = uuid.uuid4().hex
    client = SubmitClient(relay.cfg.paths.internal_socket, timeout=20)
    data = (f"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nBcc: alice@example.test\r\n"
            f"Subject: {marker}\r\n\r\n.hello\r\n").encode()
    reply = client.submit("alice@example.test", "203.0.113.5", "IMAP", "alice@example.test",
                          ["bob@example.test"], data)
    assert reply.ok and reply.queue_id, reply
    got = relay.find_delivered("bob@example.test", marker.encode())
    assert b"[203.0.113.5]" in got and b"IMAP submission" in got and b"DKIM-Signature:" in got
    assert b"Bcc:" not in got and b"\n.hello\n" in got
    bad = client.submit("alice@example.test", "203.0.113.5", "POP", "bob@example.test", ["bob@example.test"], data)
    assert bad.code == 550 and bad.imap_code() == "POLICYDENIED"


def test_xauthcheck_and_xauthfail(relay: Relay) -> None:
    client = SubmitClient(relay.cfg.paths.internal_socket, timeout=20)
    ok = client.auth_check("198.51.100.7")
    assert ok.code == 250 and ok.text == "ok"
    recorded = client.auth_fail("198.51.100.7")
    assert recorded.code == 250 and recorded.text == "recorded"
    c = RawSMTP.unix(relay.cfg.paths.internal_socket)
    try:
        assert c.cmd("XAUTHCHECK not-an-address").startswith("501")
        assert c.cmd("XAUTHFAIL").startswith("501")
    finally:
        c.close()
