"""One limiter behind SMTP, IMAP and POP: the access service's sends and logins, with real clients.

The box runs the relay and the access service; imaplib (Outbox APPEND), poplib
(XTND XMIT) and swaks (587) send as the same customer and share one quota; IMAP
and POP login failures and SMTP AUTH failures share one per-address count.
"""

from __future__ import annotations

import imaplib
import math
import poplib
import re
import shutil
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from tests.access.conftest import running_box
from tests.helpers.box import Box, make_box

pytestmark = pytest.mark.peers

PASSWORD = "correct horse battery"
PER_MINUTE, BURST = 2, 2
RETRY = re.compile(r"retry in (\d+) s")


class SourcedIMAP(imaplib.IMAP4):
    """imaplib from a chosen loopback source address (a distinct client for the limiter)."""

    def __init__(self, host: str, port: int, source: str) -> None:
        self._source = source
        super().__init__(host, port, timeout=30)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))


class SourcedPOP3(poplib.POP3):
    def __init__(self, host: str, port: int, source: str) -> None:
        self._source = source
        super().__init__(host, port, timeout=30)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    if shutil.which("swaks") is None:
        pytest.fail("missing test peer swaks: run `make test` (it installs it)")
    b = make_box(tmp_path_factory.mktemp("access-limits"))
    data = tomllib.loads(b.config_file.read_text())
    data["limits"] = {"auth_failures_per_ip": 3, "auth_failure_window": 300}
    b.config_file.write_text(tomli_w.dumps(data))
    for user in ("frank", "bob"):
        b.add_user(user, PASSWORD)
    b.cli("user", "limits", f"frank@{b.domain}", "--per-minute", str(PER_MINUTE), "--burst", str(BURST))
    with running_box(b):
        yield b


def _message(subject: str) -> bytes:
    return (f"From: frank@example.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@test>\r\n\r\nHello.\r\n").encode()


def send_imap(box: Box, subject: str) -> str:
    m = imaplib.IMAP4(box.host("imap"), box.port("imap"), timeout=30)
    try:
        m.starttls(ssl_context=box.client_tls())
        m.login("frank@example.test", PASSWORD)
        typ, data = m.append("Outbox", None, None, _message(subject))
        return f"{typ} {data[0].decode()}"
    finally:
        m.logout()


def send_pop(box: Box, subject: str) -> str:
    p = poplib.POP3(box.host("pop3"), box.port("pop3"), timeout=30)
    try:
        p.stls(context=box.client_tls())
        p.user("frank@example.test")
        p.pass_(PASSWORD)
        p._putcmd("XTND XMIT")
        p._getresp()
        for line in _message(subject).split(b"\r\n")[:-1]:
            p._putline(b"." + line if line.startswith(b".") else line)
        p._putline(b".")
        try:
            return p._getresp().decode()
        except poplib.error_proto as exc:
            return exc.args[0].decode()
    finally:
        p.quit()


def send_smtp(box: Box, subject: str, source: str | None = None, password: str = PASSWORD) -> str:
    cmd = ["swaks", "--server", f"{box.host('submission')}:{box.port('submission')}", "--tls", "--timeout", "20",
           "--auth", "PLAIN", "--auth-user", "frank@example.test", "--auth-password", password,
           "--from", "frank@example.test", "--to", "bob@example.test", "--header", f"Subject: {subject}"]
    if source:
        cmd += ["--local-interface", source]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    replies = [m.group(1) for line in out.splitlines() if (m := re.match(r"^<[-~*]*\s+(\d{3} .*)$", line))]
    errors = [r for r in replies if r[:1] in "45"]
    return errors[0] if errors else replies[-2]  # the reply to the end of DATA, before 221


def is_accepted(reply: str) -> bool:
    return reply.startswith(("OK", "+OK", "250"))


def test_3n_sends_by_imap_pop_and_smtp_share_one_quota(box: Box) -> None:
    senders = (send_imap, send_pop, send_smtp)
    results = []
    start = time.monotonic()
    for i in range(3 * PER_MINUTE):
        results.append(senders[i % 3](box, f"mix{i}"))
    elapsed = time.monotonic() - start
    accepted = [r for r in results if is_accepted(r)]
    interval = 60 / PER_MINUTE
    assert BURST <= len(accepted) <= BURST + math.floor(elapsed / interval) + 1, results
    for r in results:
        if is_accepted(r):
            continue
        m = RETRY.search(r)
        assert m and 1 <= int(m.group(1)) <= interval, r
        if r.startswith("NO"):
            assert r.startswith("NO [ALERT] Message rate limit exceeded"), r  # the Outbox's refusal
        elif r.startswith("-ERR"):
            assert r.startswith("-ERR [SYS/TEMP] Message rate limit exceeded"), r
        else:
            assert r.startswith("450 4.7.1"), r


def test_imap_pop_and_smtp_login_failures_share_one_count(box: Box) -> None:
    src = "127.0.0.7"
    for _ in range(3):
        m = SourcedIMAP(box.host("imap"), box.port("imap"), src)
        m.starttls(ssl_context=box.client_tls())
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            m.login("frank@example.test", "wrong password")
        m.logout()
    # POP from the same address is now refused before the password is even checked...
    p = SourcedPOP3(box.host("pop3"), box.port("pop3"), src)
    p.stls(context=box.client_tls())
    p.user("frank@example.test")
    with pytest.raises(poplib.error_proto) as err:
        p.pass_(PASSWORD)
    assert err.value.args[0].startswith(b"-ERR [SYS/TEMP] too many authentication failures, retry in")
    p.quit()
    # The relay counts that refusal under POP, not IMAP (its log line and relay_rate_limited_total{entry}).
    relay_log = Path(box.cfg.paths.log_dir) / "relay.log"
    deadline = time.monotonic() + 10
    while "limited entry=pop limit=auth_failures" not in relay_log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the relay did not log the POP refusal as entry=pop"
        time.sleep(0.1)
    # ...and so is SMTP AUTH, with the right password.
    assert send_smtp(box, "after-failures", source=src).startswith("421 4.7.0 too many authentication failures")
    # IMAP says LIMIT with the retry time.
    m = SourcedIMAP(box.host("imap"), box.port("imap"), src)
    m.starttls(ssl_context=box.client_tls())
    with pytest.raises(imaplib.IMAP4.error, match=r"\[LIMIT\] too many authentication failures, retry in \d+ s"):
        m.login("frank@example.test", PASSWORD)
    m.logout()
