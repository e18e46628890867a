"""Client addresses are grouped so an IPv6 /64 is one client."""

from __future__ import annotations

from appliance.ratelimit.keys import account_key, domain_key, ip_key


def test_ipv4_is_its_own_key() -> None:
    assert ip_key("203.0.113.5") == "ip:203.0.113.5"
    assert ip_key("203.0.113.5") != ip_key("203.0.113.6")


def test_ipv6_grouped_by_64() -> None:
    a = ip_key("2001:db8:1:2::1")
    assert a == "ip:2001:db8:1:2::/64"
    assert ip_key("2001:db8:1:2:ffff:ffff:ffff:ffff") == a
    assert ip_key("[2001:db8:1:2:abcd::9]") == a
    assert ip_key("2001:db8:1:3::1") != a


def test_ipv4_mapped_counts_as_ipv4() -> None:
    assert ip_key("::ffff:203.0.113.5") == ip_key("203.0.113.5")


def test_link_local_zone_is_ignored_and_garbage_does_not_crash() -> None:
    assert ip_key("fe80::1%eth0") == "ip:fe80::/64"
    assert ip_key("not-an-ip").startswith("ip:?")


def test_account_and_domain_keys_are_case_insensitive() -> None:
    assert account_key("Alice@Example.TEST") == account_key("alice@example.test")
    assert domain_key("Example.COM.") == domain_key("example.com")
