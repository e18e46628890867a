"""Rate limits and the abuse brake through the real relay, in real time, with real clients.

swaks speaks SMTP submission and port 25; IMAP/POP sends are what the access
service puts on the internal socket (XUSER sessions with protocol IMAP/POP),
driven here with a raw SMTP client over the unix socket; IMAP/POP login failures
are the socket's XAUTHFAIL. Nothing asserts timing: where real time can let one
more message through, the bound is computed from the measured elapsed time.
"""

from __future__ import annotations

import email
import json
import math
import re
import shutil
import subprocess
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from appliance.accounts import AccountStore
from tests.helpers.box import pids_under, run_cli
from tests.relay_front.relay import PASSWORD, RawSMTP, Relay, make_relay

pytestmark = pytest.mark.peers

RATE_PER_MINUTE, RATE_BURST = 2, 3  # erin: one message every 30 s, three at once
DAILY = 3  # carol's daily quota
MEMBER_PER_MINUTE, MEMBER_BURST = 2, 3  # the registry's limit for this box's own member id
BRAKE_NEW = 4  # first-time recipients that hold an account
AUTH_OK = re.compile(r"^\s*<[~-]\s*235\b", re.M)  # a 235 reply line in swaks output
RETRY = re.compile(r"retry in (\d+) s")
SERVER_LINE = re.compile(r"^<[-~*]*\s+(\d{3} .*)$")


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    if shutil.which("swaks") is None:
        pytest.fail("missing test peer swaks: run `make test` (it installs it)")
    r = make_relay(tmp_path_factory.mktemp("limits"), name="limits")
    data = tomllib.loads(r.config_file.read_text())
    data["limits"] = {
        "connections_per_ip": 3,
        "connection_rate_per_ip": 600.0,
        "connection_burst_per_ip": 200,
        "auth_failures_per_ip": 3,
        "auth_failure_window": 300,
        "abuse_brake": {"new_recipients": BRAKE_NEW, "window": 3600},
    }
    r.config_file.write_text(tomli_w.dumps(data))
    store = AccountStore(r.cfg.paths.accounts_db)
    for name in ("carol", "dave", "erin"):
        store.add(f"{name}@example.test", PASSWORD)
    store.close()
    run_cli(r.config_file, "user", "limits", "erin@example.test",
            "--per-minute", str(RATE_PER_MINUTE), "--burst", str(RATE_BURST))
    run_cli(r.config_file, "user", "limits", "carol@example.test",
            "--per-minute", "600", "--burst", "100", "--per-day", str(DAILY))

    def member_limits(reg: dict) -> None:  # type: ignore[type-arg]
        reg["members"][0]["limits"] = {"messages_per_minute": MEMBER_PER_MINUTE, "burst": MEMBER_BURST,
                                       "connections": 20}

    r.write_registry(member_limits)
    r.start()
    yield r
    r.stop()
    leaked = pids_under(r.dir)
    assert not leaked, f"processes left behind: {leaked}"


def swaks(relay: Relay, *args: str, listener: str = "submission", user: str | None = None,
          password: str = PASSWORD, source: str | None = None) -> str:
    cmd = ["swaks", "--server", relay.server(listener), "--timeout", "20"]
    if user:
        cmd += ["--tls", "--auth", "PLAIN", "--auth-user", user, "--auth-password", password]
    if source:
        cmd += ["--local-interface", source]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr


def final_reply(swaks_output: str) -> str:
    """The reply that decided the transaction: the first error, or the reply to the end of DATA."""
    # swaks marks server lines "<- ", "<~ " (TLS), "<** " / "<~* " (errors).
    replies = [m.group(1) for line in swaks_output.splitlines() if (m := SERVER_LINE.match(line))]
    errors = [r for r in replies if r[:1] in "45"]
    return errors[0] if errors else next((r for r in reversed(replies) if "queued as" in r), replies[-1])


def xuser_send(relay: Relay, user: str, protocol: str, rcpt: str, subject: str) -> str:
    """An IMAP/POP send as the access service makes it: XUSER session on the internal socket."""
    c = RawSMTP.unix(relay.cfg.paths.internal_socket)
    try:
        assert c.greeting.startswith("220")
        assert c.cmd("EHLO access").startswith("250")
        assert c.cmd(f"XUSER {user} 203.0.113.5 {protocol}").startswith("250")
        r = c.cmd(f"MAIL FROM:<{user}>")
        if not r.startswith("250"):
            return r
        r = c.cmd(f"RCPT TO:<{rcpt}>")
        if not r.startswith("250"):
            return r
        assert c.cmd("DATA").startswith("354")
        c.send(f"From: {user}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nsent over {protocol}\r\n.\r\n".encode())
        return c.reply()
    finally:
        c.cmd("QUIT")
        c.close()


def assert_limit_reply(reply: str, max_retry: float) -> int:
    assert reply.startswith("450 4.7.1"), reply
    m = RETRY.search(reply)
    assert m, reply
    assert 1 <= int(m.group(1)) <= math.ceil(max_retry), reply
    return int(m.group(1))


def count_delivered(relay: Relay, address: str, subject: str) -> int:
    return sum(1 for p in relay.delivered(address) if f"Subject: {subject}".encode() in p.read_bytes())


def test_customer_sending_3n_by_smtp_imap_and_pop_gets_n_plus_burst(relay: Relay) -> None:
    subject = "rate-mix"
    results: list[str] = []
    start = time.monotonic()
    for i in range(3 * RATE_PER_MINUTE * 2):  # 12 sends, rotating over the three ways in
        way = ("smtp", "IMAP", "POP")[i % 3]
        if way == "smtp":
            out = swaks(relay, "--from", "erin@example.test", "--to", "bob@example.test",
                        "--header", f"Subject: {subject}", user="erin@example.test")
            results.append(final_reply(out))
        else:
            results.append(xuser_send(relay, "erin@example.test", way, "bob@example.test", subject))
    elapsed = time.monotonic() - start
    accepted = [r for r in results if r.startswith("250")]
    refused = [r for r in results if not r.startswith("250")]
    interval = 60 / RATE_PER_MINUTE
    # GCRA: the burst at once, then one per interval; never more, whichever way the mail came in.
    assert RATE_BURST <= len(accepted) <= RATE_BURST + math.floor(elapsed / interval) + 1, results
    assert len(accepted) <= RATE_PER_MINUTE * max(1, math.ceil(elapsed / 60)) + RATE_BURST
    for r in refused:
        assert_limit_reply(r, interval)
    # Every 250 is a message on disk (delivered locally); no refused one is.
    relay.wait_delivered("bob@example.test", 1)
    deadline = time.monotonic() + 20
    while count_delivered(relay, "bob@example.test", subject) < len(accepted) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert count_delivered(relay, "bob@example.test", subject) == len(accepted)
    assert "limited entry=" in relay.log_text() and "key=acct:erin@example.test" in relay.log_text()
    # Counted in metrics, by kind and entry point (IMAP/POP sends arrive on the internal socket).
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{relay.port('metrics')}/metrics", timeout=10).read().decode()
    limited = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^relay_rate_limited_total\{entry="(\w+)",kind="messages"\} (\S+)$', metrics, re.M)}
    assert sum(limited.values()) >= len(refused) and set(limited) <= {"submission", "imap", "pop"}


def test_member_over_its_registry_limit_gets_450_never_5xx(relay: Relay) -> None:
    results = []
    start = time.monotonic()
    for _ in range(MEMBER_BURST + 3):
        out = swaks(relay, "--from", "someone@remote.test", "--to", "bob@example.test",
                    "--header", "Subject: member-rate", listener="mx")
        results.append(final_reply(out))
    elapsed = time.monotonic() - start
    accepted = [r for r in results if r.startswith("250")]
    interval = 60 / MEMBER_PER_MINUTE
    assert MEMBER_BURST <= len(accepted) <= MEMBER_BURST + math.floor(elapsed / interval) + 1, results
    for r in results:
        assert not r.startswith("5"), results
        if not r.startswith("250"):
            assert_limit_reply(r, interval)
            assert "member example" in r


def test_daily_quota_survives_a_relay_restart(relay: Relay) -> None:
    def send() -> str:
        return final_reply(swaks(relay, "--from", "carol@example.test", "--to", "bob@example.test",
                                 "--header", "Subject: daily", user="carol@example.test"))

    assert send().startswith("250")
    assert send().startswith("250")
    relay.stop()
    relay.start()
    assert send().startswith("250")
    refused = send()  # the 4th of the UTC day: the count before the restart was kept
    assert refused.startswith("450 4.7.1") and "Daily message quota" in refused, refused
    assert int(RETRY.search(refused).group(1)) <= 86400
    shown = run_cli(relay.config_file, "user", "limits", "carol@example.test").stdout
    assert f"today (UTC): {DAILY} message(s) accepted" in shown


def test_auth_failures_from_smtp_and_imap_share_one_limit(relay: Relay) -> None:
    bad = [swaks(relay, "--to", "bob@example.test", "--quit-after", "AUTH", user="alice@example.test",
                 password="wrong password", source="127.0.0.3") for _ in range(3)]
    assert "535 5.7.8" in bad[0] and "535 5.7.8" in bad[1]
    assert "421 4.7.0 too many authentication failures" in bad[2]
    # Even the right password is not tried any more from that address.
    good = swaks(relay, "--to", "bob@example.test", "--quit-after", "AUTH", user="alice@example.test",
                 source="127.0.0.3")
    # swaks prints server lines as "<~ CODE" (TLS) or "<- CODE": a bare "235" also matches a port.
    assert "421 4.7.0" in good and not AUTH_OK.search(good), good
    c = RawSMTP.unix(relay.cfg.paths.internal_socket)
    try:
        c.cmd("EHLO access")
        assert c.cmd("XAUTHCHECK 127.0.0.3 IMAP").startswith("421 4.7.0")  # the access service sees it too
        # IMAP/POP login failures from another address count against SMTP AUTH from it.
        assert c.cmd("XAUTHFAIL 127.0.0.4 IMAP").startswith("250")
        assert c.cmd("XAUTHFAIL 127.0.0.4 POP").startswith("250")
        assert c.cmd("XAUTHFAIL 127.0.0.4 IMAP").startswith("421 4.7.0")
    finally:
        c.close()
    out = swaks(relay, "--to", "bob@example.test", "--quit-after", "AUTH", user="alice@example.test",
                source="127.0.0.4")
    assert "421 4.7.0" in out and not AUTH_OK.search(out), out


def test_connections_per_ip_refused_before_the_banner(relay: Relay) -> None:
    port = relay.port("submission")
    conns = [RawSMTP("127.0.0.1", port, source="127.0.0.5") for _ in range(3)]
    try:
        assert all(c.greeting.startswith("220") for c in conns)
        extra = RawSMTP("127.0.0.1", port, source="127.0.0.5")
        assert extra.greeting.startswith("421 4.7.0") and "127.0.0.5" in extra.greeting
        assert extra.closed()
        extra.close()
        conns.pop().close()
        deadline = time.monotonic() + 10
        while True:  # the relay notices the close asynchronously
            again = RawSMTP("127.0.0.1", port, source="127.0.0.5")
            if again.greeting.startswith("220") or time.monotonic() > deadline:
                break
            again.close()
            time.sleep(0.1)
        assert again.greeting.startswith("220")
        again.close()
    finally:
        for c in conns:
            c.close()


def test_compromised_account_is_held_and_released(relay: Relay) -> None:
    victims = [f"victim{i}@elsewhere.example" for i in range(BRAKE_NEW)]
    out = swaks(relay, "--from", "dave@example.test", "--to", ",".join(victims), user="dave@example.test")
    assert final_reply(out).startswith("250")  # accepted: the hold applies from the next message
    held = swaks(relay, "--from", "dave@example.test", "--to", "bob@example.test", user="dave@example.test")
    assert final_reply(held).startswith("450 4.7.1"), held
    assert xuser_send(relay, "dave@example.test", "IMAP", "bob@example.test", "held").startswith("450 4.7.1")

    status = json.loads(run_cli(relay.config_file, "status", "--json", check=False).stdout)
    [entry] = [h for h in status["held_accounts"] if h["address"] == "dave@example.test"]
    assert "first-time recipients" in entry["reason"]
    notes = list((Path(relay.cfg.paths.mail_dir) / "example.test" / "postmaster" / "new").iterdir())
    msgs = [email.message_from_bytes(p.read_bytes()) for p in notes]
    assert any("dave@example.test" in m["Subject"] for m in msgs)

    run_cli(relay.config_file, "user", "release", "dave@example.test")
    # Released: sends again, and the events that tripped the brake no longer count.
    again = swaks(relay, "--from", "dave@example.test", "--to", "newfriend@elsewhere.example",
                  user="dave@example.test")
    assert final_reply(again).startswith("250"), again
    assert final_reply(swaks(relay, "--from", "dave@example.test", "--to", "bob@example.test",
                             user="dave@example.test")).startswith("250")
    status = json.loads(run_cli(relay.config_file, "status", "--json", check=False).stdout)
    assert not [h for h in status["held_accounts"] if h["address"] == "dave@example.test"]
