"""The console's storage without a browser: config refusal, time series, sessions, limit hits."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.config import ConfigError, load
from appliance.console import timeseries
from appliance.console.limits import recent_hits
from appliance.console.sessions import LIFETIME, LoginTokens, Sessions
from appliance.console.timeseries import GRAPHS, Reading, TimeSeries
from tests.helpers.box import Box

ACCEPTED = next(g for g in GRAPHS if g.key == "accepted")
REFUSED = next(g for g in GRAPHS if g.key == "refused")
QUEUE = next(g for g in GRAPHS if g.key == "queue")
T0 = 1_780_000_020.0  # a minute boundary


def test_console_without_https_is_refused_before_listening(box: Box) -> None:
    text = box.config_file.read_text()
    section = text.index("[listeners.console]")
    box.config_file.write_text(text[:section] + text[section:].replace('tls = "implicit"', 'tls = "none"', 1))
    with pytest.raises(ConfigError, match=r"key listeners\.console\.tls: must be 'implicit'"):
        load(box.config_file)
    proc = subprocess.run([sys.executable, "-m", "services.console", "-c", str(box.config_file)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "listeners.console.tls" in proc.stderr


def _reading(values: dict[str, float], sources: tuple[str, ...] = ("metrics", "access_metrics")) -> Reading:
    return Reading(values, list(sources), [])


def test_counters_become_increases_per_minute(tmp_path: Path) -> None:
    ts = TimeSeries(tmp_path / "c.sqlite3")
    # First sample of a source: a baseline, whatever the counter says (it counted before we looked).
    ts.store(_reading({"accepted": 40.0, "queue": 2.0}), T0)
    ts.store(_reading({"accepted": 43.0, "queue": 5.0}), T0 + 60)
    # The relay restarted: its counter starts from 0 again; 2 is the increase.
    ts.store(_reading({"accepted": 2.0, "queue": 1.0}), T0 + 120)
    # A labelled counter that appears now, from a source seen before, counts from 0.
    ts.store(_reading({"accepted": 2.0, "refused:spf": 4.0, "queue": 0.0}), T0 + 180)
    m0 = int(T0 // 60)
    assert ts.points(ACCEPTED, m0, now=T0 + 200) == {"accepted": [(m0, 0.0), (m0 + 1, 3.0), (m0 + 2, 2.0),
                                                                  (m0 + 3, 0.0)]}
    assert ts.points(REFUSED, m0, now=T0 + 200) == {"refused:spf": [(m0 + 3, 4.0)]}
    assert ts.points(QUEUE, m0 + 1, now=T0 + 200)["queue"] == [(m0 + 1, 5.0), (m0 + 2, 1.0), (m0 + 3, 0.0)]
    # What was read just now adds the unfinished minute, without being stored.
    live = _reading({"accepted": 9.0, "queue": 3.0})
    assert ts.points(ACCEPTED, m0, live, now=T0 + 250)["accepted"][-1] == (m0 + 4, 7.0)
    assert ts.points(ACCEPTED, m0, now=T0 + 250)["accepted"][-1] == (m0 + 3, 0.0)
    per_hour = timeseries.bucket(ts.points(ACCEPTED, m0, now=T0 + 200)["accepted"], 60, True)
    assert timeseries.total(per_hour) == 5.0


def test_a_source_that_did_not_answer_leaves_a_gap_not_a_zero(tmp_path: Path) -> None:
    ts = TimeSeries(tmp_path / "c.sqlite3")
    ts.store(_reading({"accepted": 5.0}), T0)
    ts.store(Reading({"queue": 0.0}, [], ["metrics: connection refused"]), T0 + 60)
    ts.store(_reading({"accepted": 8.0}), T0 + 120)
    m0 = int(T0 // 60)
    assert ts.points(ACCEPTED, m0, now=T0 + 130)["accepted"] == [(m0, 0.0), (m0 + 2, 3.0)]
    assert ts.last_sample() == (m0 + 2, ["access_metrics", "metrics"])


def test_sessions_expire_and_are_capped(tmp_path: Path) -> None:
    s = Sessions(tmp_path / "c.sqlite3")
    token, sess = s.create("admin@example.test", "admin", "127.0.0.1", now=1000.0)
    assert s.get(token, now=1000.0 + LIFETIME - 1) == sess
    assert s.get(token, now=1000.0 + LIFETIME) is None
    assert s.get("x" * 101) is None and s.get(None) is None
    other, _ = s.create("bob@example.test", "customer", "127.0.0.1")
    s.delete_login("bob@example.test")
    assert s.get(other) is None


def test_login_token_is_bound_to_its_cookie(tmp_path: Path) -> None:
    key = tmp_path / "console.key"
    tokens = LoginTokens(key)
    assert key.stat().st_mode & 0o777 == 0o600
    cookie = tokens.new_cookie()
    assert tokens.check(cookie, tokens.token_for(cookie))
    assert not tokens.check(tokens.new_cookie(), tokens.token_for(cookie))
    assert not tokens.check(None, tokens.token_for(cookie)) and not tokens.check(cookie, "")
    assert LoginTokens(key).check(cookie, tokens.token_for(cookie))  # the key survives a restart


def test_limit_hits_of_the_last_hour_from_the_relay_log(box: Box) -> None:
    cfg = box.cfg
    now = time.time()
    fmt = "%Y-%m-%d %H:%M:%S"
    old, recent = time.strftime(fmt, time.localtime(now - 7200)), time.strftime(fmt, time.localtime(now - 60))
    line = "{} INFO appliance.ratelimit.limiter: limited entry={} limit={} key={} limit_value='5' retry_after=1.0\n"
    Path(cfg.paths.log_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.paths.log_dir) / "relay.log").write_text(
        line.format(old + ",001", "smtp", "auth_ip", "ip:192.0.2.1")
        + line.format(recent + ",002", "imap", "auth_account", "acct:bob@example.test") * 2
        + "unrelated line\n")
    assert recent_hits(cfg, now=now) == [("auth_account", "acct:bob@example.test", "imap", 2)]


def test_delivery_counters_are_read_from_the_relay_metrics_page() -> None:
    from prometheus_client import REGISTRY, generate_latest

    from appliance.metrics import DELIVERIES

    before = timeseries.values_from_metrics(generate_latest(REGISTRY).decode(), "metrics")
    DELIVERIES.labels("delivered").inc(3)
    DELIVERIES.labels("bounced").inc()
    after = timeseries.values_from_metrics(generate_latest(REGISTRY).decode(), "metrics")
    assert {k: after[k] - before[k] for k in ("delivered", "deferred", "bounced")} == \
        {"delivered": 3.0, "deferred": 0.0, "bounced": 1.0}
    # A relay page without them (an older relay) still gives a baseline of 0, not a gap.
    assert {k: timeseries.values_from_metrics("", "metrics")[k] for k in ("delivered", "deferred", "bounced")} == \
        dict.fromkeys(("delivered", "deferred", "bounced"), 0.0)
