"""The limiter's decisions with a controllable clock: messages, recipients, daily quotas, connections, AUTH."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.accounts import Account, LimitOverride
from appliance.config import Config
from appliance.ratelimit import Kind
from appliance.ratelimit.clock import ManualClock
from appliance.ratelimit.limiter import Limiter
from appliance.ratelimit.store import LimitStore, seconds_to_utc_midnight
from appliance.registry.model import Member, MemberLimits

ALICE = Account("alice@example.test")


def send(lim: Limiter, account: Account, recipients: int = 1) -> object:
    """One message the way the relay does it: check at MAIL, reserve at DATA, commit when spooled."""
    s = lim.customer(account)
    refused = lim.check_message(s) or lim.check_recipient(s, recipients) or lim.reserve(s, recipients)
    if refused:
        return refused
    lim.commit(s)
    return None


def test_customer_gets_burst_then_450_with_exact_retry(limiter: Limiter, clock: ManualClock) -> None:
    # default class: 6/min (one per 10 s), burst 3
    assert [send(limiter, ALICE) for _ in range(3)] == [None, None, None]
    refused = send(limiter, ALICE)
    assert refused.kind is Kind.MESSAGES and refused.key == "acct:alice@example.test"
    assert refused.retry_after == pytest.approx(10.0) and refused.retry_seconds == 10
    clock.advance(4.2)
    assert send(limiter, ALICE).retry_seconds == 6  # 5.8 s rounded up
    clock.advance(5.8)
    assert send(limiter, ALICE) is None


def test_checks_count_nothing_until_reserved(limiter: Limiter) -> None:
    s = limiter.customer(ALICE)
    for _ in range(50):
        assert limiter.check_message(s) is None
        assert limiter.check_recipient(s, 1) is None
    assert limiter.daily_count(s) == 0


def test_cancelled_reservation_is_given_back(limiter: Limiter) -> None:
    s = limiter.customer(ALICE)
    for _ in range(3):
        assert limiter.reserve(s, 1) is None
        limiter.cancel(s, 1)  # e.g. the spool write failed: 451, nothing accepted
    assert limiter.daily_count(s) == 0
    assert [send(limiter, ALICE) for _ in range(3)] == [None, None, None]


def test_override_beats_class(limiter: Limiter) -> None:
    bob = Account("bob@example.test", override=LimitOverride(per_minute=60, burst=1, per_day=None))
    assert send(limiter, bob) is None
    refused = send(limiter, bob)
    assert refused.kind is Kind.MESSAGES and refused.retry_after == pytest.approx(1.0)
    assert refused.limit == "60/min burst 1"


def test_unknown_class_falls_back_to_default(limiter: Limiter) -> None:
    ghost = Account("ghost@example.test", limit_class="removed-class")
    assert limiter.customer(ghost).messages.describe() == "6/min burst 3"


def test_too_many_recipients_in_one_message(limiter: Limiter) -> None:
    s = limiter.customer(ALICE)
    assert limiter.check_recipient(s, 5) is None
    refused = limiter.check_recipient(s, 6)
    assert refused.kind is Kind.RECIPIENTS_PER_MESSAGE and refused.limit == "5 per message"


def test_recipient_rate(limiter: Limiter, clock: ManualClock) -> None:
    # 60 recipients/min, burst = max_recipients (5); message rate lifted so recipients bind
    many = Account("many@example.test", limit_class="bulk")
    s = limiter.customer(many)
    assert limiter.reserve(s, 5) is None
    refused = limiter.check_recipient(s, 1)
    assert refused.kind is Kind.RECIPIENTS and refused.retry_after == pytest.approx(1.0)
    clock.advance(3)
    assert limiter.check_recipient(s, 3) is None
    assert limiter.check_recipient(s, 4).retry_after == pytest.approx(1.0)


def test_daily_quota_survives_a_new_store(cfg: Config, clock: ManualClock) -> None:
    db = Path(cfg.paths.state_dir) / "limits.sqlite3"
    first = Limiter(cfg, LimitStore(db, clock.time), clock)
    for _ in range(7):
        assert send(first, ALICE) is None
        clock.advance(10)
    first.close()  # the relay restarts

    second = Limiter(cfg, LimitStore(db, clock.time), clock)
    s = second.customer(ALICE)
    assert second.daily_count(s) == 7
    for _ in range(3):
        assert send(second, ALICE) is None
        clock.advance(10)
    refused = send(second, ALICE)
    assert refused.kind is Kind.DAILY and refused.limit == "10/day"
    assert refused.retry_after == pytest.approx(seconds_to_utc_midnight(clock.time()))
    # The next UTC day starts from zero.
    clock.advance(refused.retry_after + 1)
    assert send(second, ALICE) is None
    second.close()


def test_member_limits_from_registry_and_defaults(limiter: Limiter) -> None:
    isp = Member("isp-a", "ISP A", "active", "", ("isp-a.example",), (), MemberLimits(120, 2, 3))
    s = limiter.member(isp)
    assert s.key == "member:isp-a" and s.recipients is None and s.per_day == 0
    assert limiter.reserve(s, 50) is None and limiter.reserve(s, 50) is None
    refused = limiter.check_message(s)
    assert refused.kind is Kind.MESSAGES and refused.retry_after == pytest.approx(0.5)
    bare = Member("isp-b", "ISP B", "active", "", (), (), None)
    assert limiter.member(bare).messages.describe() == "600/min burst 200"


def test_connection_concurrency_and_rate_per_ip(limiter: Limiter, clock: ManualClock) -> None:
    # 2 concurrent per IP; rate 6/min burst 4; every attempt counts
    assert limiter.connection_opened("203.0.113.5") is None
    assert limiter.connection_opened("203.0.113.5") is None
    refused = limiter.connection_opened("203.0.113.5")
    assert refused.kind is Kind.CONNECTIONS
    limiter.connection_closed("203.0.113.5")
    assert limiter.connection_opened("203.0.113.5") is None  # 4th attempt: still within the burst
    limiter.connection_closed("203.0.113.5")
    refused = limiter.connection_opened("203.0.113.5")  # 5th attempt in no time
    assert refused.kind is Kind.CONNECTION_RATE and refused.retry_after == pytest.approx(10.0)
    assert limiter.open_connections("203.0.113.5") == 1
    # The other half of an IPv6 /64 shares the key; another /64 does not.
    assert limiter.connection_opened("2001:db8::1") is None
    assert limiter.connection_opened("2001:db8::2") is None
    assert limiter.connection_opened("2001:db8::3").kind is Kind.CONNECTIONS
    assert limiter.connection_opened("2001:db8:0:1::3") is None


def test_member_connections_share_the_member_cap(limiter: Limiter) -> None:
    isp = Member("isp-a", "ISP A", "active", "", (), (), MemberLimits(600, 200, 3))
    hosts = ["192.0.2.10", "192.0.2.11", "192.0.2.12"]
    for h in hosts:
        assert limiter.connection_opened(h, isp) is None
    assert limiter.connection_opened("192.0.2.13", isp).kind is Kind.CONNECTIONS
    limiter.connection_closed("192.0.2.10", isp)
    assert limiter.connection_opened("192.0.2.13", isp) is None


def test_auth_failures_per_ip(limiter: Limiter, clock: ManualClock) -> None:
    ip = "198.51.100.7"
    assert limiter.auth_check(ip) is None
    assert limiter.auth_failure(ip) is None
    assert limiter.auth_failure(ip) is None
    refused = limiter.auth_failure(ip)  # third failure in the window: closed
    assert refused.kind is Kind.AUTH_FAILURES
    # 3 per 60 s refills one every 20 s
    assert refused.retry_after == pytest.approx(20.0)
    assert limiter.auth_check(ip).retry_seconds == 20
    assert limiter.auth_check("2001:db8::1") is None
    clock.advance(20)
    assert limiter.auth_check(ip) is None
