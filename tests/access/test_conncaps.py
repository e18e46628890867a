"""Connection caps (services/access/conncaps.py): the decisions, keys, counters and config keys.

The end-to-end refusals (the 11th IMAP/POP3 session of one user from one address) are in
tests/access/test_pop3_diff.py, against a running box.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from appliance.accounts import Account
from appliance.config import ConfigError
from appliance.ratelimit import Kind
from services.access.conncaps import CapReached, ConnectionCaps
from tests.ratelimit.conftest import make_config

ALICE = Account("alice@example.test")
BULK = Account("bulk@example.test", limit_class="bulk")


def _caps(tmp_path: Path, **limits: object) -> ConnectionCaps:
    return ConnectionCaps(make_config(tmp_path, limits=dict(limits)))


def _refused(protocol: str, limit: str) -> float:
    return REGISTRY.get_sample_value("access_connections_refused_total", {"protocol": protocol, "limit": limit}) or 0.0


def test_defaults_are_dovecots_ten_per_user_ip_and_fifty_per_ip(tmp_path: Path) -> None:
    caps = _caps(tmp_path)
    assert caps.user_ip_cap(ALICE) == 10
    leases = [caps.open_ip("192.0.2.1", "imap") for _ in range(50)]
    with pytest.raises(CapReached):
        caps.open_ip("192.0.2.1", "pop3")  # IMAP and POP3 share the unauthenticated cap
    for lease in leases:
        lease.release()
    assert caps.count_ip("192.0.2.1") == 0


def test_eleventh_session_of_a_user_from_one_address_is_refused_and_release_frees_it(tmp_path: Path) -> None:
    caps = _caps(tmp_path)
    before = _refused("pop3", "user_ip")
    leases = [caps.open_user(ALICE, "192.0.2.7", "pop3") for _ in range(10)]
    with pytest.raises(CapReached, match="user\\+IP") as exc:
        caps.open_user(ALICE, "192.0.2.7", "pop3")
    assert exc.value.limited.kind is Kind.CONNECTIONS
    assert exc.value.limited.key == "access/ip:192.0.2.7/acct:alice@example.test"
    assert _refused("pop3", "user_ip") == before + 1
    # IMAP and POP3 share the count; other addresses and other accounts have slots of their own.
    with pytest.raises(CapReached):
        caps.open_user(ALICE, "192.0.2.7", "imap")
    caps.open_user(ALICE, "192.0.2.8", "pop3").release()
    caps.open_user(Account("bob@example.test"), "192.0.2.7", "pop3").release()
    leases[0].release()
    leases[0].release()  # idempotent: a second release must not free a slot someone else holds
    assert caps.count_user("alice@example.test", "192.0.2.7") == 9
    extra = caps.open_user(ALICE, "192.0.2.7", "imap")
    with pytest.raises(CapReached):
        caps.open_user(ALICE, "192.0.2.7", "pop3")
    for lease in [extra, *leases]:
        lease.release()
    assert caps.count_user("alice@example.test", "192.0.2.7") == 0


def test_ipv6_counts_per_64_and_login_case_is_folded(tmp_path: Path) -> None:
    caps = _caps(tmp_path, access_connections_per_ip=2)
    before = _refused("imap", "ip")
    caps.open_ip("2001:db8:1:2::1", "imap")
    caps.open_ip("2001:db8:1:2::ffff", "imap")
    with pytest.raises(CapReached, match="Too many connections"):
        caps.open_ip("2001:db8:1:2:abcd::9", "imap")
    assert _refused("imap", "ip") == before + 1
    caps.open_ip("2001:db8:1:3::1", "imap").release()  # another /64
    upper = Account("ALICE@example.test")
    for _ in range(10):
        caps.open_user(upper, "192.0.2.9", "imap")
    with pytest.raises(CapReached):
        caps.open_user(ALICE, "192.0.2.9", "imap")


def test_caps_per_limit_class(tmp_path: Path) -> None:
    caps = _caps(
        tmp_path,
        classes={
            "default": {"messages_per_minute": 6, "burst": 3},
            "bulk": {"messages_per_minute": 6, "burst": 3, "access_connections_per_user_ip": 2},
        },
    )
    assert caps.user_ip_cap(BULK) == 2 and caps.user_ip_cap(ALICE) == 10
    caps.open_user(BULK, "192.0.2.1", "pop3")
    caps.open_user(BULK, "192.0.2.1", "imap")
    with pytest.raises(CapReached):
        caps.open_user(BULK, "192.0.2.1", "imap")
    # An account whose class is gone from the config gets `default`, not unlimited.
    assert caps.user_ip_cap(Account("x@example.test", limit_class="gone")) == 10


def test_unknown_protocol_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="protocol"):
        _caps(tmp_path).open_ip("192.0.2.1", "smtp")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "limits,key",
    [
        ({"access_connections_per_ip": 0}, "limits.access_connections_per_ip"),
        ({"classes": {"default": {"messages_per_minute": 6, "burst": 3, "access_connections_per_user_ip": 0}}},
         "limits.classes.default.access_connections_per_user_ip"),
        ({"classes": {"default": {"messages_per_minute": 6, "burst": 3, "access_connections_per_user_ip": "10"}}},
         "limits.classes.default.access_connections_per_user_ip"),
    ],
)
def test_bad_cap_config_is_refused_naming_the_key(tmp_path: Path, limits: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=f"key {key}"):
        make_config(tmp_path, limits=limits)
