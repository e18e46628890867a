"""The shared limiter (Redis) makes the same decisions as the local one, and one allowance spans the fleet.

Real redis-server on a unix socket; a ManualClock drives the arithmetic, so the
retry times are exact. The local limiter's own cases (tests/ratelimit) run here
again against Redis; then two limiters on one Redis play two relays of a fleet.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.accounts import Account, AccountStore
from appliance.config import Config, ConfigError, StateConfig
from appliance.ratelimit import Kind
from appliance.ratelimit.brake import AbuseBrake
from appliance.ratelimit.clock import ManualClock
from appliance.ratelimit.decisions import StateUnavailable
from appliance.ratelimit.limiter import Limiter
from appliance.ratelimit.pacer import Pacer
from appliance.ratelimit.runtime import build
from appliance.ratelimit.shared import (
    PROBE_INTERVAL,
    RedisState,
    SharedBrakeWindow,
    SharedLimitStore,
)
from appliance.ratelimit.shared_limiter import SharedLimiter
from appliance.registry.model import Member, MemberLimits
from tests.fleet.redis_server import RedisServer, redis_server  # noqa: F401  (fixture)
from tests.ratelimit import test_brake as local_brake
from tests.ratelimit import test_limiter as local
from tests.ratelimit.conftest import limiter_config, make_config

pytestmark = pytest.mark.peers

ALICE = Account("alice@example.test")


def shared(cfg: Config, url: str, **state: object) -> Config:
    """CFG with `[state] backend = "shared"` on the test Redis (accounts stay in SQLite in these tests)."""
    st = StateConfig(backend="shared", redis_url=url, postgres_url="postgresql://appliance@127.0.0.1/unused", **state)
    return cfg.model_copy(update={"state": st})


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def cfg(tmp_path: Path, redis_server: RedisServer) -> Config:  # noqa: F811
    return shared(limiter_config(tmp_path), redis_server.url)


@pytest.fixture
def limiter(cfg: Config, clock: ManualClock) -> Iterator[Limiter]:
    lim = Limiter.open(cfg, clock)
    assert isinstance(lim, SharedLimiter)
    yield lim
    lim.close()


# --- the local limiter's cases, against Redis -------------------------------------------------------

test_customer_gets_burst_then_450_with_exact_retry = local.test_customer_gets_burst_then_450_with_exact_retry
test_checks_count_nothing_until_reserved = local.test_checks_count_nothing_until_reserved
test_cancelled_reservation_is_given_back = local.test_cancelled_reservation_is_given_back
test_override_beats_class = local.test_override_beats_class
test_unknown_class_falls_back_to_default = local.test_unknown_class_falls_back_to_default
test_too_many_recipients_in_one_message = local.test_too_many_recipients_in_one_message
test_recipient_rate = local.test_recipient_rate
test_member_limits_from_registry_and_defaults = local.test_member_limits_from_registry_and_defaults
test_connection_concurrency_and_rate_per_ip = local.test_connection_concurrency_and_rate_per_ip
test_member_connections_share_the_member_cap = local.test_member_connections_share_the_member_cap
test_auth_failures_per_ip = local.test_auth_failures_per_ip


@pytest.fixture
def brake_cfg(tmp_path: Path, redis_server: RedisServer) -> Config:  # noqa: F811
    return shared(local_brake.brake_cfg.__wrapped__(tmp_path), redis_server.url)


@pytest.fixture
def accounts(brake_cfg: Config) -> Iterator[AccountStore]:
    store = AccountStore(brake_cfg.paths.accounts_db)
    store.add(local_brake.ALICE, "correct horse battery")
    yield store
    store.close()


@pytest.fixture
def brake(brake_cfg: Config, accounts: AccountStore, clock: ManualClock) -> Iterator[AbuseBrake]:
    state = RedisState(brake_cfg)
    yield AbuseBrake(brake_cfg, SharedLimitStore(state, clock.time), accounts, clock,  # type: ignore[arg-type]
                     shared_window=SharedBrakeWindow(state, clock.time))
    state.close()


test_regular_correspondents_never_trip = local_brake.test_regular_correspondents_never_trip
test_many_first_time_recipients_hold_and_notify = local_brake.test_many_first_time_recipients_hold_and_notify
test_new_recipients_outside_the_window_do_not_add_up = local_brake.test_new_recipients_outside_the_window_do_not_add_up
test_rejected_ratio_needs_min_sample = local_brake.test_rejected_ratio_needs_min_sample
test_release_lifts_the_hold_and_resets_the_window = local_brake.test_release_lifts_the_hold_and_resets_the_window


# --- one allowance for the whole fleet --------------------------------------------------------------


def send(lim: Limiter, account: Account = ALICE, recipients: int = 1) -> object:
    return local.send(lim, account, recipients)


def test_two_relays_share_one_burst_and_rate(cfg: Config, clock: ManualClock) -> None:
    a, b = Limiter.open(cfg, clock), Limiter.open(cfg, clock)
    try:
        # default class: burst 3, 6/min. Alternating relays: 3 pass in total, not 6.
        results = [send(lim) for lim in (a, b, a, b, a, b)]
        assert [r is None for r in results] == [True, True, True, False, False, False]
        assert results[3].kind is Kind.MESSAGES and results[3].retry_after == pytest.approx(10.0)
        clock.advance(10)
        assert send(b) is None and send(a) is not None  # one interval refills one message, fleet-wide
    finally:
        a.close()
        b.close()


def test_daily_quota_is_exact_across_relays_and_survives_them(cfg: Config, clock: ManualClock) -> None:
    bulk = Account("bulk@example.test", limit_class="default")
    a, b = Limiter.open(cfg, clock), Limiter.open(cfg, clock)
    sent = 0
    for i in range(40):  # per_day 10; the rate refills every 10 s
        sent += send((a, b)[i % 2], bulk) is None
        clock.advance(10)
    assert sent == 10
    refused = send(a, bulk)
    assert refused.kind is Kind.DAILY
    a.close()
    b.close()
    c = Limiter.open(cfg, clock)  # a relay restarted: the count is in Redis, not in the process
    assert c.daily_count(c.customer(bulk)) == 10 and send(c, bulk).kind is Kind.DAILY
    c.close()
    # What `appliance user limits` shows on any box of the fleet.
    from appliance.ratelimit.shared import read_daily_count

    assert read_daily_count(cfg, "acct:bulk@example.test", clock.time()) == 10


def test_reservation_is_atomic_between_relays(cfg: Config, clock: ManualClock) -> None:
    """Reserve on one relay, and the other sees the token gone at once; a cancel gives it back to both."""
    a, b = Limiter.open(cfg, clock), Limiter.open(cfg, clock)
    s = a.customer(ALICE)
    for _ in range(2):
        assert send(a) is None
    assert a.reserve(s, 1) is None  # the last token, not committed yet
    assert b.reserve(s, 1).kind is Kind.MESSAGES
    a.cancel(s, 1)
    assert b.reserve(s, 1) is None
    b.commit(s)
    assert a.daily_count(s) == 3
    a.close()
    b.close()


def test_outsider_allowances_per_address_and_network_span_relays(tmp_path: Path, redis_server: RedisServer) -> None:  # noqa: F811
    """tests/internet's outsider case, with the two relays sharing one allowance per address and per /24."""
    cfg = shared(make_config(tmp_path, limits={
        "outsider_messages_per_minute_per_ip": 6, "outsider_burst_per_ip": 2,
        "outsider_messages_per_minute_per_net": 6, "outsider_burst_per_net": 3}), redis_server.url)
    clock = ManualClock()
    a, b = Limiter.open(cfg, clock), Limiter.open(cfg, clock)
    assert all(a.outsider_message("198.51.100.7") is None for _ in range(10))  # MAIL: counts nothing
    assert a.outsider_message("198.51.100.7", take=True) is None
    assert b.outsider_message("198.51.100.7", take=True) is None
    refused = a.outsider_message("198.51.100.7")
    assert refused.kind is Kind.OUTSIDER_MESSAGES and refused.key == "ip:198.51.100.7"
    assert refused.retry_seconds == 10
    assert b.outsider_message("198.51.100.8", take=True) is None
    refused = a.outsider_message("198.51.100.9", take=True)  # the /24's third: used up fleet-wide
    assert refused.key == "net:198.51.100.0/24"
    assert b.outsider_message("203.0.113.1", take=True) is None
    clock.advance(10)
    assert b.outsider_message("198.51.100.9", take=True) is None
    assert a.outsider_message("198.51.100.10", take=True).key == "net:198.51.100.0/24"  # neither was taken
    a.close()
    b.close()


def test_connection_cap_spans_relays_and_a_crashed_box_releases_its_slots(
    cfg: Config, clock: ManualClock, redis_server: RedisServer  # noqa: F811
) -> None:
    cfg = shared(cfg, redis_server.url, connection_lease=5)
    a, b = Limiter.open(cfg, clock), Limiter.open(cfg, clock)
    isp = Member("isp-a", "ISP A", "active", "", (), (), MemberLimits(600, 200, 2))  # 2 connections, fleet-wide
    assert a.connection_opened("192.0.2.10", isp) is None
    assert b.connection_opened("192.0.2.11", isp) is None
    assert b.connection_opened("192.0.2.12", isp).kind is Kind.CONNECTIONS
    assert a.open_connections("192.0.2.10", isp) == 2
    b.connection_closed("192.0.2.11", isp)
    assert a.connection_opened("192.0.2.10", isp) is None
    # Box a "crashes": its lease refresher stops and it never says goodbye.
    a.connections.stop()
    b.connections.refresh()
    assert b.connection_opened("192.0.2.11", isp).kind is Kind.CONNECTIONS
    clock.advance(5.5)  # a's leases ran out; a live box refreshes its own every third of the lease
    assert b.open_connections("192.0.2.11", isp) == 0
    assert b.connection_opened("192.0.2.11", isp) is None
    b.close()
    a.store.close()


def test_lease_refresh_keeps_a_live_box_counted(cfg: Config, clock: ManualClock) -> None:
    lim = Limiter.open(cfg, clock)
    member = Member("isp-a", "ISP A", "active", "", (), (), MemberLimits(600, 200, 1))
    assert lim.connection_opened("192.0.2.10", member) is None
    for _ in range(4):  # two leases long, refreshed as the box's refresher thread does
        clock.advance(cfg.state.connection_lease / 2)
        lim.connections.refresh()
    assert lim.connection_opened("192.0.2.11", member).kind is Kind.CONNECTIONS
    lim.close()


def test_shared_pacer_keeps_both_relays_to_the_members_rate(cfg: Config, clock: ManualClock) -> None:
    rt_a, rt_b = build(cfg, clock), build(cfg, clock)
    dest = Member("isp-b", "ISP B", "active", "", (), (), MemberLimits(60, 2, 10))  # one per second, two at once
    delays = [p.delay(dest) for p in (rt_a.pacer, rt_b.pacer, rt_a.pacer, rt_b.pacer)]
    assert delays == [0.0, 0.0, pytest.approx(1.0), pytest.approx(2.0)]
    rt_a.close()
    rt_b.close()
    assert isinstance(Pacer(cfg, clock).delay(dest), float)


def test_scripts_are_loaded_again_after_a_script_flush(
    limiter: Limiter, redis_server: RedisServer  # noqa: F811
) -> None:
    assert send(limiter) is None
    redis_server.client().script_flush()  # what a restarted Redis looks like to EVALSHA: NOSCRIPT
    assert send(limiter) is None


def test_abuse_brake_judges_the_fleets_sending_together(
    brake_cfg: Config, accounts: AccountStore, clock: ManualClock
) -> None:
    """Two relays' brakes on one Redis: 5 + 5 first-time recipients reach the threshold of 10 together."""
    state = RedisState(brake_cfg)
    brakes = [AbuseBrake(brake_cfg, SharedLimitStore(state, clock.time), accounts, clock,  # type: ignore[arg-type]
                         shared_window=SharedBrakeWindow(state, clock.time)) for _ in range(2)]
    alice = local_brake.ALICE
    assert brakes[0].record_accepted(alice, [f"a{i}@spam.example" for i in range(5)]) is None
    clock.advance(1)
    assert brakes[1].record_accepted(alice, [f"a{i}@spam.example" for i in range(5)]) is None  # known by now
    assert brakes[1].record_accepted(alice, [f"b{i}@spam.example" for i in range(4)]) is None
    assert brakes[0].tally(alice).new == 9 and not accounts.get(alice).held
    reason = brakes[0].record_accepted(alice, ["c@spam.example"])
    assert reason is not None and "10 first-time recipients" in reason
    assert accounts.get(alice).held
    state.close()


def test_release_while_redis_is_down_keeps_the_hold(
    brake: AbuseBrake, brake_cfg: Config, accounts: AccountStore, clock: ManualClock,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """`appliance user release` fails (temporary) rather than lift a hold whose events would still count."""
    from appliance.ratelimit.brake import release

    alice = local_brake.ALICE
    brake.record_accepted(alice, [f"v{i}@spam.example" for i in range(10)])
    assert accounts.get(alice).held
    redis_server.kill()
    with pytest.raises(StateUnavailable):
        release(brake_cfg, accounts, alice, clock)
    assert accounts.get(alice).held


def test_pacing_falls_back_to_this_box_while_redis_is_down(
    cfg: Config, clock: ManualClock, redis_server: RedisServer  # noqa: F811
) -> None:
    """Already-spooled mail keeps going out during an outage, paced by the box alone."""
    rt = build(cfg, clock)
    dest = Member("isp-b", "ISP B", "active", "", (), (), MemberLimits(60, 1, 10))
    assert rt.pacer.delay(dest) == 0.0
    redis_server.kill()
    assert rt.pacer.delay(dest) == 0.0  # this box's own table: it has not sent to isp-b yet
    assert rt.pacer.delay(dest) == pytest.approx(1.0)
    rt.close()


# --- Redis goes away ---------------------------------------------------------------------------------


def test_unreachable_redis_fails_fast_and_recovers_by_itself(
    cfg: Config, clock: ManualClock, redis_server: RedisServer  # noqa: F811
) -> None:
    lim = Limiter.open(cfg, clock)
    s = lim.customer(ALICE)
    assert send(lim) is None
    redis_server.kill()
    with pytest.raises(StateUnavailable):
        lim.check_message(s)
    started = time.monotonic()
    for _ in range(50):  # the breaker answers without waiting for Redis
        with pytest.raises(StateUnavailable):
            lim.reserve(s, 1)
    assert time.monotonic() - started < cfg.state.redis_timeout * 2
    # Connections and logins go on, counted by this box alone.
    assert lim.connection_opened("203.0.113.9") is None
    assert lim.auth_check("203.0.113.9", login="alice@example.test") is None
    lim.connection_closed("203.0.113.9")
    redis_server.start()  # back, empty (no persistence)
    deadline = time.monotonic() + PROBE_INTERVAL * 5
    while True:
        try:
            assert send(lim) is None
            break
        except StateUnavailable:
            assert time.monotonic() < deadline, "the limiter did not recover after Redis came back"
            time.sleep(0.1)
    lim.close()


def test_timeout_is_short_against_a_silent_redis(cfg: Config, clock: ManualClock, redis_server: RedisServer) -> None:  # noqa: F811
    """A Redis that accepts but never answers (stopped with SIGSTOP) costs one redis_timeout, then fails fast."""
    import signal

    cfg = shared(cfg, redis_server.url, redis_timeout=0.3)
    lim = Limiter.open(cfg, clock)
    s = lim.customer(ALICE)
    assert lim.check_message(s) is None
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(StateUnavailable):
            lim.check_message(s)
        assert time.monotonic() - started < 2.0
        with pytest.raises(StateUnavailable):
            lim.check_message(s)
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    lim.close()


def test_status_shows_the_limiters_alarm_while_redis_is_down(
    tmp_path: Path, redis_server: RedisServer  # noqa: F811
) -> None:
    """`appliance status` asks Redis itself: no alarm while it answers, an alarm and exit 1 while it does not."""
    import json
    import tomllib

    import tomli_w

    from tests.helpers.box import make_box, run_cli

    box = make_box(tmp_path, name="status")
    data = tomllib.loads(box.config_file.read_text())
    # PostgreSQL on a loopback port nobody listens on: the accounts alarm is fleet-pg's, not asserted here.
    data["state"] = {"backend": "shared", "redis_url": redis_server.url,
                     "postgres_url": "postgresql://appliance@127.0.0.1:1/appliance"}
    box.config_file.write_text(tomli_w.dumps(data))
    st = json.loads(run_cli(box.config_file, "status", "--json", check=False).stdout)
    assert st["limiter"] == {"backend": "shared", "alarm": None}
    redis_server.kill()
    proc = run_cli(box.config_file, "status", "--json", check=False)
    assert proc.returncode == 1
    alarm = json.loads(proc.stdout)["limiter"]["alarm"]
    assert alarm.startswith("Redis unreachable, new mail is answered 451 4.3.0"), alarm
    text = run_cli(box.config_file, "status", check=False).stdout
    assert "limiter: shared (Redis, state.redis_url)  ALARM: Redis unreachable" in text


def test_password_comes_from_its_file_and_a_missing_file_stops_the_start(
    cfg: Config, clock: ManualClock, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis-auth", password="s3cret redis")
    server.start()
    try:
        pw = tmp_path / "redis.password"
        with pytest.raises(ConfigError, match=r"key state\.redis_password_file: .*redis\.password"):
            Limiter.open(shared(cfg, server.url, redis_password_file=str(pw)), clock)
        pw.write_text("wrong\n")
        lim = Limiter.open(shared(cfg, server.url, redis_password_file=str(pw)), clock)
        with pytest.raises(StateUnavailable):  # AUTH refused: a temporary failure (451), never an accept
            send(lim)
        lim.close()
        pw.write_text("s3cret redis\n")
        lim = Limiter.open(shared(cfg, server.url, redis_password_file=str(pw)), clock)
        assert send(lim) is None
        lim.close()
    finally:
        server.stop()


# --- config ------------------------------------------------------------------------------------------


def test_state_config_refuses_inline_passwords_and_reads_the_file(tmp_path: Path) -> None:
    from appliance.config import parse

    base = {"box": {"hostname": "mx.example.test", "domains": ["example.test"], "member_id": "example"},
            "tls": {"cert": "c", "key": "k"}, "dkim": {"key": "d"}}
    with pytest.raises(ConfigError, match=r"key state\.redis_url: value \(not shown\): has a password") as e:
        parse({**base, "state": {"redis_url": "redis://app:s3cret@10.0.0.5:6379/0"}})
    assert "s3cret" not in str(e.value)
    with pytest.raises(ConfigError, match=r"key state\.postgres_url: required when state\.backend is 'shared'"):
        parse({**base, "state": {"backend": "shared", "redis_url": "redis://10.0.0.5:6379/0"}})
    assert parse(base).state.backend == "local"
    pw = tmp_path / "redis.pw"
    cfg = parse({**base, "state": {"redis_password_file": str(pw)}})
    with pytest.raises(ConfigError, match=r"key state\.redis_password_file: .*redis\.pw"):
        cfg.state.password("redis")
    pw.write_text("s3cret\n")
    assert cfg.state.password("redis") == "s3cret"
