"""Credential stuffing: wrong passwords for one account from many addresses are slowed per account,
and the real user, logging in from where they did before, is never refused because of it.

First at the limiter (exact, with a manual clock), then end to end: SMTP AUTH on
port 587 from 50 loopback addresses, and the IMAP/POP path (the internal
socket's XAUTHCHECK/XAUTHFAIL/XAUTHOK, as services/access/backend.py sends them).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from appliance.config import Config
from appliance.ratelimit import Kind
from appliance.ratelimit.clock import ManualClock
from appliance.ratelimit.limiter import Limiter
from appliance.submitclient import SubmitClient
from tests.ratelimit.conftest import make_config
from tests.relay_front.relay import PASSWORD, RawSMTP, Relay, client_tls, make_relay

ALICE = "alice@example.test"
WINDOW = 300
NEW, KNOWN = 5, 20
HOME = "192.0.2.1"  # where Alice logged in from before
ATTACKERS = [f"198.51.100.{i}" for i in range(1, 51)]


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return make_config(tmp_path, limits={
        "auth_failures_per_ip": 3, "auth_failure_window": WINDOW,
        "auth_failures_per_account_new": NEW, "auth_failures_per_account_known": KNOWN,
    })


@pytest.fixture
def limiter(cfg: Config) -> Iterator[tuple[Limiter, ManualClock]]:
    clock = ManualClock()
    lim = Limiter.open(cfg, clock)
    yield lim, clock
    lim.close()


def _refusals(kind: str, entry: str) -> float:
    return REGISTRY.get_sample_value("relay_rate_limited_total", {"kind": kind, "entry": entry}) or 0.0


def test_fifty_addresses_one_account_are_slowed_but_the_owner_is_not(
        limiter: tuple[Limiter, ManualClock], cfg: Config) -> None:
    lim, clock = limiter
    lim.auth_success(HOME, ALICE)
    before = _refusals("auth_account", "smtp")
    verified = refused = 0
    for ip in ATTACKERS:  # one wrong password from each of 50 addresses: no per-IP limit ever trips
        if lim.auth_check(ip, login=ALICE) is not None:
            refused += 1
            continue
        verified += 1
        assert lim.auth_failure(ip, login=ALICE) is None
    assert verified == NEW and refused == len(ATTACKERS) - NEW
    assert _refusals("auth_account", "smtp") - before == refused  # every refusal is counted
    v = lim.auth_check("203.0.113.9", login=ALICE)
    assert v is not None and v.kind is Kind.AUTH_ACCOUNT
    # ...and temporary: it names a retry, and after it the account may be tried again.
    assert 0 < v.retry_after <= WINDOW / NEW + 1e-6
    # The owner, from an address she logged in from before, is not refused at all.
    assert lim.auth_check(HOME, login=ALICE) is None
    # Other accounts are not affected.
    assert lim.auth_check("203.0.113.9", login="bob@example.test") is None
    clock.advance(v.retry_after)
    assert lim.auth_check("203.0.113.9", login=ALICE) is None


def test_known_addresses_survive_a_restart_and_have_their_own_limit(cfg: Config) -> None:
    clock = ManualClock()
    lim = Limiter.open(cfg, clock)
    lim.auth_success(HOME, "Alice@Example.Test")
    lim.close()
    lim = Limiter.open(cfg, clock)  # the relay restarted: the address is remembered
    try:
        for ip in ATTACKERS[:NEW]:
            lim.auth_failure(ip, login=ALICE)
        assert lim.auth_check(ATTACKERS[-1], login=ALICE).kind is Kind.AUTH_ACCOUNT
        assert lim.auth_check(HOME, login=ALICE) is None
        # The owner mistyping from home uses the lenient allowance (her IP's own limit aside).
        lim.auth_failure(HOME, login=ALICE)
        assert lim.auth_check(HOME, login=ALICE) is None
    finally:
        lim.close()


# --- end to end -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    r = make_relay(tmp_path_factory.mktemp("stuffing"), relay={"internal_allowed_uids": [0]})
    data = r.config_file.read_text()
    r.config_file.write_text(data + f"\n[limits]\nauth_failures_per_ip = 3\nauth_failure_window = {WINDOW}\n"
                             f"auth_failures_per_account_new = {NEW}\n"
                             f"auth_failures_per_account_known = {KNOWN}\n")
    r.start()
    yield r
    r.stop()


def _auth(relay: Relay, source: str, login: str, password: str) -> str:
    c = RawSMTP("127.0.0.1", relay.port("submission"), source=source)
    try:
        assert c.greeting.startswith("220"), c.greeting
        c.cmd("EHLO client.test")
        assert c.cmd("STARTTLS").startswith("220")
        c.starttls(client_tls(relay))
        c.cmd("EHLO client.test")
        blob = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
        return c.cmd(f"AUTH PLAIN {blob}")
    finally:
        c.close()


def test_smtp_auth_from_fifty_addresses(relay: Relay) -> None:
    home = "127.0.0.2"
    assert _auth(relay, home, ALICE, PASSWORD).startswith("235")  # Alice logs in from home once
    replies = [_auth(relay, f"127.0.1.{i}", ALICE, "wrong password!") for i in range(1, 51)]
    assert all(r.startswith("535") for r in replies[:NEW]), replies[:NEW]
    assert all(r.startswith("454 4.7.0") for r in replies[NEW:]), sorted(set(replies[NEW:]))
    assert not any(r.startswith("5") for r in replies[NEW:])  # temporary, never a permanent refusal
    # Even with the right password, a new address has to wait...
    assert _auth(relay, "127.0.2.1", ALICE, PASSWORD).startswith("454 4.7.0")
    # ...but Alice at home is not locked out.
    assert _auth(relay, home, ALICE, PASSWORD).startswith("235")
    assert "limit=auth_account" in relay.log_text()  # every refusal is logged


def test_imap_pop_logins_share_the_account_limit(relay: Relay) -> None:
    client = SubmitClient(relay.cfg.paths.internal_socket)
    bob = "bob@example.test"
    assert client.auth_check("127.0.3.1", bob).ok
    assert client.auth_ok("127.0.3.1", bob).ok  # Bob logged in over IMAP from 127.0.3.1
    for i in range(1, NEW + 1):
        assert client.auth_check(f"127.0.4.{i}", bob).ok
        assert client.auth_fail(f"127.0.4.{i}", bob).ok
    refused = client.auth_check("127.0.4.99", bob)
    assert (refused.code, refused.enhanced) == (454, "4.7.0") and refused.limited  # IMAP NO [LIMIT]
    # SMTP AUTH to the same account from a new address is refused too: one limiter.
    assert _auth(relay, "127.0.4.100", bob, PASSWORD).startswith("454 4.7.0")
    assert client.auth_check("127.0.3.1", bob).ok  # Bob's own address is fine
    # A login with spaces or odd octets travels as xtext and is still counted as itself.
    odd = "odd login+=\u00fc"
    assert client.auth_fail("127.0.5.1", odd).ok
