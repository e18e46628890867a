"""Fixtures for limiter unit tests: a config, a manual clock, a fresh limiter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.config import Config, parse
from appliance.ratelimit.clock import ManualClock
from appliance.ratelimit.limiter import Limiter


def make_config(tmp: Path, limits: dict[str, Any] | None = None, relay: dict[str, Any] | None = None) -> Config:
    data: dict[str, Any] = {
        "box": {"hostname": "mx.example.test", "domains": ["example.test"], "member_id": "example"},
        "paths": {
            "state_dir": str(tmp / "lib"),
            "spool_dir": str(tmp / "spool"),
            "mail_dir": str(tmp / "mail"),
            "run_dir": str(tmp / "run"),
            "log_dir": str(tmp / "log"),
        },
        "tls": {"cert": str(tmp / "cert.pem"), "key": str(tmp / "key.pem")},
        "dkim": {"key": str(tmp / "dkim.key")},
        "limits": limits or {},
        "relay": relay or {},
    }
    return parse(data, "test.toml")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def limiter_config(tmp: Path) -> Config:
    """The limits the limiter's cases are written against (tests/fleet runs the same cases on Redis)."""
    return make_config(
        tmp,
        limits={
            "classes": {
                "default": {"messages_per_minute": 6, "burst": 3, "recipients_per_minute": 60, "per_day": 10},
                "bulk": {"messages_per_minute": 600, "burst": 100, "recipients_per_minute": 60},
            },
            "connections_per_ip": 2,
            "connection_rate_per_ip": 6,
            "connection_burst_per_ip": 4,
            "auth_failures_per_ip": 3,
            "auth_failure_window": 60,
        },
        relay={"max_recipients": 5},
    )


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return limiter_config(tmp_path)


@pytest.fixture
def limiter(cfg: Config, clock: ManualClock) -> Limiter:
    lim = Limiter.open(cfg, clock)
    yield lim
    lim.close()
