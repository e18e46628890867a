"""A real Postfix as the neighbouring MTA: it relays to our MX, and receives from our delivery over pinned TLS."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import Config
from appliance.tlsfiles import load_cert, spki_sha256
from tests.helpers.postfix import PrivatePostfix
from tests.helpers.wait import wait_for
from tests.relay_back.conftest import write_registry
from tests.relay_back.peers import require_peers
from tests.relay_back.relayproc import RelayProcess, delivered_ids, raise_member_limits

pytestmark = [pytest.mark.peers, pytest.mark.root]


@pytest.fixture
def neighbour(devbox: tuple[Path, Config], tmp_path: Path) -> Iterator[tuple[Config, PrivatePostfix, RelayProcess]]:
    require_peers("postfix", "swaks")
    config_file, cfg = devbox
    raise_member_limits(cfg)
    mx = f"[{cfg.listeners.mx.host}]:{cfg.listeners.mx.port}"
    pf = PrivatePostfix.create("relay-back-neighbour", {
        "virtual_mailbox_domains": "pf.test",
        "transport_maps": f"inline:{{ example.test=smtp:{mx} }}",
        "smtpd_tls_loglevel": "1",
        "smtpd_tls_received_header": "yes",
    })
    pin = spki_sha256(load_cert(pf.cert))
    write_registry(cfg, [{"id": "isp-pf", "status": "active", "domains": ["pf.test"],
                          "relays": [{"host": "127.0.0.1", "port": pf.port, "addresses": ["127.0.0.2/32"],
                                      "spki_sha256": [pin]}]}])
    pf.start()
    relay = RelayProcess(config_file, tmp_path / "relay.log")
    try:
        relay.start(cfg)
        yield cfg, pf, relay
    finally:
        relay.stop()
        pf.remove()


def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["swaks", "--timeout", "30", *args], capture_output=True, text=True, timeout=90)


def test_postfix_relays_to_our_mx(neighbour) -> None:  # type: ignore[no-untyped-def]
    cfg, pf, _ = neighbour
    r = swaks("--server", f"127.0.0.1:{pf.port}", "--from", "someone@pf.test", "--to", "alice@example.test",
              "--header", "Message-ID: <via-postfix@pf.test>", "--header", "Subject: from the neighbour")
    assert r.returncode == 0, r.stdout[-2000:]
    maildir = Path(cfg.paths.mail_dir) / "example.test" / "alice"
    wait_for("Postfix -> our MX -> Maildir", lambda: "<via-postfix@pf.test>" in delivered_ids(maildir), 60)
    assert "status=sent" in pf.log() and f"127.0.0.1]:{cfg.listeners.mx.port}" in pf.log()


def test_our_delivery_reaches_postfix_over_pinned_tls(neighbour) -> None:  # type: ignore[no-untyped-def]
    cfg, pf, _ = neighbour
    r = swaks("--server", f"{cfg.listeners.submission.host}:{cfg.listeners.submission.port}", "--tls",
              "--auth", "PLAIN", "--auth-user", "alice@example.test", "--auth-password", "correct horse battery",
              "--from", "alice@example.test", "--to", "bob@pf.test",
              "--header", "From: alice@example.test", "--header", "Message-ID: <to-postfix@example.test>")
    assert r.returncode == 0, r.stdout[-2000:]
    got = wait_for("our relay -> Postfix",
                   lambda: list(pf.maildir_new.glob("*")) if pf.maildir_new.exists() else None, 60)
    received = got[0].read_bytes()
    assert b"<to-postfix@example.test>" in received
    # Postfix saw a TLS session from our delivery worker (never plaintext to a member).
    assert b"(using TLSv1." in received.split(b"\n\n", 1)[0]
    assert "TLS connection established from localhost[127.0.0.1]" in pf.log()
    queue = Path(cfg.paths.spool_dir) / "queue"
    wait_for("queue empty", lambda: not any(queue.iterdir()), 30)
