"""GCRA arithmetic with a clock that only moves when told: exact passes and exact retry-after."""

from __future__ import annotations

import pytest

from appliance.ratelimit.clock import ManualClock
from appliance.ratelimit.gcra import MAX_DEBT_WINDOWS, Gcra, Rate


def test_burst_passes_at_once_then_exact_retry(clock: ManualClock) -> None:
    g = Gcra(clock.monotonic)
    rate = Rate(per_minute=6, burst=3)  # one every 10 s, three at once
    assert [g.take("k", rate) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert g.take("k", rate) == pytest.approx(10.0)
    clock.advance(9.5)
    assert g.take("k", rate) == pytest.approx(0.5)
    clock.advance(0.5)
    assert g.take("k", rate) == 0.0
    assert g.take("k", rate) == pytest.approx(10.0)


def test_at_most_rate_plus_burst_in_any_minute(clock: ManualClock) -> None:
    g = Gcra(clock.monotonic)
    rate = Rate(per_minute=10, burst=5)
    passed = 0
    for _ in range(31):  # 3N offered over one minute: an attempt every 2 s from t=0 to t=60 inclusive
        if g.take("k", rate) == 0.0:
            passed += 1
        clock.advance(2)
    assert passed == 10 + 5  # N plus the burst, not 3N


def test_peek_counts_nothing_and_refund_gives_back(clock: ManualClock) -> None:
    g = Gcra(clock.monotonic)
    rate = Rate(per_minute=60, burst=1)
    assert g.peek("k", rate) == 0.0
    assert g.peek("k", rate) == 0.0
    assert g.take("k", rate) == 0.0
    assert g.peek("k", rate) == pytest.approx(1.0)
    g.refund("k", rate)
    assert g.peek("k", rate) == 0.0


def test_cost_larger_than_one(clock: ManualClock) -> None:
    g = Gcra(clock.monotonic)
    rate = Rate(per_minute=60, burst=10)
    assert g.take("k", rate, cost=8) == 0.0
    assert g.take("k", rate, cost=3) == pytest.approx(1.0)
    assert g.take("k", rate, cost=2) == 0.0


def test_hit_counts_refused_attempts_but_debt_is_capped(clock: ManualClock) -> None:
    g = Gcra(clock.monotonic)
    rate = Rate(per_minute=60, burst=2)
    for _ in range(1000):
        g.hit("k", rate)
    # A flood keeps the key blocked, but not for longer than the capped debt.
    wait = g.peek("k", rate)
    assert wait == pytest.approx(rate.capacity * (MAX_DEBT_WINDOWS - 1) + rate.interval)
    clock.advance(wait)
    assert g.peek("k", rate) == 0.0


def test_schedule_spaces_sends(clock: ManualClock) -> None:
    g = Gcra(clock.monotonic)
    rate = Rate(per_minute=30, burst=2)
    waits = [g.schedule("m", rate) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.0, 2.0, 4.0, 6.0])


def test_keys_are_independent_and_stale_keys_swept(clock: ManualClock) -> None:
    g = Gcra(clock.monotonic)
    rate = Rate(per_minute=60, burst=1)
    assert g.take("a", rate) == 0.0
    assert g.take("b", rate) == 0.0
    clock.advance(5)
    for i in range(5000):
        g.take(f"x{i}", rate)
    assert len(g) == 5000  # a and b (stale) swept, the 5000 fresh keys kept


def test_bad_rate_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="burst >= 1"):
        Rate(per_minute=10, burst=0)
