"""Prometheus counters of the limiter (default registry, served by the relay's metrics listener)."""

from __future__ import annotations

from prometheus_client import Counter

LIMITED = Counter(
    "relay_rate_limited",
    "Requests refused by a rate limit, by kind of limit and entry point",
    ["kind", "entry"],
)
BRAKE_HOLDS = Counter("relay_abuse_brake_holds", "Accounts held by the abuse brake")
BRAKE_HOLD_ERRORS = Counter("relay_abuse_brake_hold_errors", "Holds the abuse brake could not write (retried)")
STORE_WRITE_ERRORS = Counter("relay_limits_store_write_errors", "Batches the limiter could not write to limits.sqlite3 (retried)")
