"""Limiter keys. One namespace per kind of thing limited, so keys never collide.

Client addresses are grouped: an IPv6 client gets a whole /64 from its ISP
(RFC 6177), so limiting single IPv6 addresses would be no limit at all.
IPv4-mapped IPv6 addresses count as their IPv4 address.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

IPV6_PREFIX = 64


@lru_cache(maxsize=65536)
def ip_key(address: str) -> str:
    """``ip:203.0.113.5`` or ``ip:2001:db8:1:2::/64``; unparsable input is keyed as given (never crashes)."""
    text = address.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]  # zone index of a link-local address
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return f"ip:?{text}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"ip:{ip.ipv4_mapped}"
        net = ipaddress.IPv6Network((int(ip) >> (128 - IPV6_PREFIX) << (128 - IPV6_PREFIX), IPV6_PREFIX))
        return f"ip:{net}"
    return f"ip:{ip}"


@lru_cache(maxsize=65536)
def net_key(address: str) -> str:
    """``net:203.0.113.0/24`` or ``net:2001:db8:1::/48``: the network an outside client's address is in.

    The per-network limit for mail from outside the consortium (relay.outsiders = "verify"):
    a sender with a whole /24 (IPv6 /48, one site's allocation) shares one allowance.
    """
    key = ip_key(address)
    text = key[3:]
    if text.startswith("?"):
        return f"net:{text}"
    ip = ipaddress.ip_network(text, strict=False)
    prefix = 24 if ip.version == 4 else 48
    return f"net:{ip.supernet(new_prefix=prefix) if ip.prefixlen > prefix else ip}"


def account_key(login: str) -> str:
    return f"acct:{login.lower()}"


def member_key(member_id: str) -> str:
    return f"member:{member_id}"


def domain_key(domain: str) -> str:
    return f"dom:{domain.lower().rstrip('.')}"
