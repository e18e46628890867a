"""HOST:PORT parsing, one strict parser for the config keys and command options that take one.

Accepted: ``HOST:PORT`` and ``[IPV6]:PORT``; with a default port also ``HOST``, ``[IPV6]`` and a bare
IPv6 literal (``::1``, unambiguous only without a port). HOST is a DNS name (letters, digits and
hyphens in dot-separated labels of at most 63, RFC 1123 2.1) or an IPv4 literal; anything else
(``_``, a space, an empty label, a bad bracketed IPv6, junk after ``]``) is refused. Errors name
WHAT, the config key or option the value came from, so the operator knows which line to mend.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_MAX_NAME = 253  # RFC 1035 2.3.4, without the trailing dot


def parse(value: str, what: str, default_port: int | None = None) -> tuple[str, int]:
    """VALUE -> (host, port); ValueError "WHAT: VALUE: ..." otherwise. The host of a bracketed IPv6
    is returned without its brackets."""
    form = "HOST:PORT or [IPV6]:PORT" if default_port is None else "HOST[:PORT] or [IPV6][:PORT]"

    def bad(why: str) -> ValueError:
        return ValueError(f"{what}: {value!r}: {why} (expected {form})")

    port_text: str | None
    if value.startswith("["):
        host, close, rest = value[1:].partition("]")
        if not close:
            raise bad("no ']' after the IPv6 address")
        if rest and not rest.startswith(":"):
            raise bad(f"{rest!r} after ']'")
        port_text = rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
    elif value.count(":") > 1:
        if default_port is None:
            raise bad("an IPv6 address needs brackets and a port")
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            raise bad("not an IPv6 address (an IPv6 address with a port is written [IPV6]:PORT)") from None
        host, port_text = value, None
    else:
        host, colon, port_text = value.partition(":")
        if not colon:
            port_text = None
        if not host:
            raise bad("missing host")
        if len(host.rstrip(".")) > _MAX_NAME or not _HOSTNAME.fullmatch(host):
            raise bad(f"{host!r} is not a host name or IPv4 address")
    if port_text is None:
        if default_port is None:
            raise bad("missing port")
        return host, default_port
    return host, _port(port_text, bad)


def port(text: str, what: str) -> int:
    """A port number 1..65535 given alone (e.g. `--submission PORT`)."""

    def bad(why: str) -> ValueError:
        return ValueError(f"{what}: {text!r}: {why}")

    return _port(text, bad)


def _port(text: str, bad: Callable[[str], ValueError]) -> int:
    if not text.isascii() or not text.isdigit():
        raise bad(f"port {text!r} is not a number")
    n = int(text)
    if not 1 <= n <= 65535:
        raise bad(f"port {n} is out of range 1..65535")
    return n
