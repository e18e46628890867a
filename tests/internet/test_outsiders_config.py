"""relay.outsiders and its settings: defaults by role, bad values refused naming the key; the outsider limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import ConfigError
from appliance.ratelimit import Kind
from appliance.ratelimit.clock import ManualClock
from appliance.ratelimit.limiter import Limiter
from tests.ratelimit.conftest import make_config


def test_default_is_refuse_for_a_member_and_verify_for_an_edge_box(tmp_path: Path) -> None:
    assert make_config(tmp_path).outsiders == "refuse"
    edge = make_config(tmp_path, relay={"upstream": {"host": "isp-a.test", "username": "colo@isp-a.test",
                                                     "password_file": str(tmp_path / "pw")}})
    edge = edge.model_copy(update={"box": edge.box.model_copy(update={"role": "edge"})})
    assert edge.outsiders == "verify"
    assert make_config(tmp_path, relay={"outsiders": "verify"}).outsiders == "verify"
    assert make_config(tmp_path, relay={"outsiders": "refuse"}).outsiders == "refuse"


@pytest.mark.parametrize(("relay", "key"), [
    ({"outsiders": "accept"}, "relay.outsiders"),
    ({"outsiders": True}, "relay.outsiders"),
    ({"resolver": {"nameservers": ["ns.example.net"]}}, "relay.resolver.nameservers"),
    ({"resolver": {"timeout": 0}}, "relay.resolver.timeout"),
    ({"verify": {"dnsbl_zones": ["not a zone"]}}, "relay.verify.dnsbl_zones"),
    ({"verify": {"arc_trusted_sealers": ["-bad-.test"]}}, "relay.verify.arc_trusted_sealers"),
])
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, relay: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        make_config(tmp_path, relay=relay)
    assert f"key {key}" in str(exc.value)


def test_init_dev_internet_writes_verify(tmp_path: Path) -> None:
    from appliance.config import load
    from appliance.devbox import init_dev

    box = init_dev(tmp_path / "box", base_port=0, internet=True)
    assert load(box.config_file).outsiders == "verify"
    plain = init_dev(tmp_path / "plain", base_port=0)
    assert load(plain.config_file).outsiders == "refuse"


def test_outsider_messages_are_limited_per_address_and_per_24(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, limits={"outsider_messages_per_minute_per_ip": 6, "outsider_burst_per_ip": 2,
                                        "outsider_messages_per_minute_per_net": 6, "outsider_burst_per_net": 3})
    clock = ManualClock()
    lim = Limiter.open(cfg, clock)
    try:
        # Checking at MAIL counts nothing.
        assert all(lim.outsider_message("198.51.100.7") is None for _ in range(10))
        assert lim.outsider_message("198.51.100.7", take=True) is None
        assert lim.outsider_message("198.51.100.7", take=True) is None
        refused = lim.outsider_message("198.51.100.7")
        assert refused is not None and refused.kind is Kind.OUTSIDER_MESSAGES
        assert refused.key == "ip:198.51.100.7" and refused.retry_seconds == 10
        # A neighbour in the same /24 has its own address allowance but shares the network's.
        assert lim.outsider_message("198.51.100.8", take=True) is None
        refused = lim.outsider_message("198.51.100.9")
        assert refused is not None and refused.key == "net:198.51.100.0/24"
        # Another /24 is not affected.
        assert lim.outsider_message("203.0.113.1", take=True) is None
        # An IPv6 sender is keyed by its /64 and grouped by its /48.
        assert [lim.outsider_message(f"2001:db8:1:{n}::1", take=True) for n in range(3)] == [None, None, None]
        refused = lim.outsider_message("2001:db8:1:ffff::1")
        assert refused is not None and refused.key == "net:2001:db8:1::/48"
        # The allowance refills at the configured rate (6/min: one every 10 s).
        clock.advance(10)
        assert lim.outsider_message("198.51.100.9", take=True) is None
    finally:
        lim.close()
