"""Connection caps of the access service: per client address before login, per account+address after.

One ``ConnectionCaps`` per access process, shared by the IMAP and POP3 listeners:
``Backend.caps`` (services/access/backend.py builds it with the backend)::

    caps = self.backend.caps          # ConnectionCaps(cfg)

    # connectionMade, before the greeting:
    try:
        ip_lease = caps.open_ip(client_ip, "imap")          # or "pop3"
    except CapReached as exc:
        # IMAP: "* BYE [UNAVAILABLE] " + exc.text, then close
        # POP3: "-ERR [SYS/TEMP] " + exc.text instead of the greeting (RFC 3206 §4: a resource
        #       shortage; IN-USE would say the maildrop is locked), then close
        ...

    # after a successful login (Backend.login fired with an Account):
    try:
        user_lease = caps.open_user(account, client_ip, "imap")
    except CapReached as exc:
        # IMAP: "* BYE [UNAVAILABLE] " + exc.text (or "<tag> NO [UNAVAILABLE]" and close); POP3: "-ERR [IN-USE] ..."
        ...
    ip_lease.release()     # logged in: this connection no longer counts as an unauthenticated one

    # connectionLost (always, whatever state; release() is idempotent):
    ip_lease.release(); user_lease.release()

The caps (``appliance/config/limits.py``, ``docs/configuration.md``):

- ``limits.access_connections_per_ip`` (default 50): connections from one client
  address (an IPv6 /64, the relay limiter's ``ip_key``) that have not logged in,
  IMAP and POP3 together. Logged-in connections do not count here: a carrier-grade
  NAT address carries many customers, and each is bounded by the next cap.
- ``limits.classes.NAME.access_connections_per_user_ip`` (default 10, Dovecot's
  ``mail_max_userip_connections``): logged-in sessions of one account from one client
  address, IMAP and POP3 together. The account's limit class decides (unknown class:
  ``default``). Dovecot counts each protocol apart (its anvil key is ``protocol/ip/user``);
  here one count covers both, because a POP3 maildrop is exclusive (RFC 1939 §8: a
  second POP3 session of the account gets ``-ERR [IN-USE]`` anyway), so a POP3-only
  cap would never bind, and one customer's total from one address stays bounded.

A connection from a box of the fleet that proxies a customer is counted under the customer's
address its IMAP ``ID x-originating-ip`` gives (``IMAPConnection.proxied_for`` moves the pre-login
lease; docs/fleet.md "The client's address at the home box"), or its POP3 ``XCLIENT ADDR``
(services/access/pop3/xclient.py).

Keys, refusal decisions (``Limited`` of kind ``connections``) and the log line
format are the relay limiter's (``appliance.ratelimit``), so one grep finds every
refusal of the box; a concurrency count needs no shared state with the relay
process, because every IMAP/POP connection ends in this process (a restart drops
the connections and their counts together). Every refusal is logged and counted in
``access_connections_refused_total{protocol, limit}``; the open leases are the gauge
``access_connection_leases{protocol, limit}``.

Not thread-safe: call it from the reactor thread only (connectionMade/Lost and
login callbacks all run there).
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import Counter, Gauge
from twisted.python import log

from appliance.accounts import Account
from appliance.config import Config, LimitClass
from appliance.ratelimit import Kind, Limited, account_key, ip_key

Protocol = Literal["imap", "pop3"]
PROTOCOLS: tuple[Protocol, ...] = ("imap", "pop3")

REFUSED = Counter(
    "access_connections_refused",
    "IMAP/POP3 connections refused by a connection cap, by protocol and cap (ip: before login, user_ip: at login)",
    ["protocol", "limit"],
)
LEASES = Gauge(
    "access_connection_leases",
    "IMAP/POP3 connections currently counted against a cap, by protocol and cap (ip, user_ip)",
    ["protocol", "limit"],
)


class CapReached(Exception):
    """A connection cap is full. ``text`` is what the client sees after the response code."""

    def __init__(self, text: str, limited: Limited) -> None:
        super().__init__(text)
        self.text = text
        self.limited = limited


class Lease:
    """One connection counted against one cap; ``release()`` gives the slot back (idempotent)."""

    __slots__ = ("_caps", "_key", "_label", "_protocol", "released")

    def __init__(self, caps: ConnectionCaps, key: str, protocol: Protocol, label: str) -> None:
        self._caps = caps
        self._key = key
        self._protocol = protocol
        self._label = label
        self.released = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self._caps._drop(self._key)
        LEASES.labels(self._protocol, self._label).dec()


class ConnectionCaps:
    def __init__(self, cfg: Config) -> None:
        self.limits = cfg.limits
        self._open: dict[str, int] = {}

    # --- the two caps -----------------------------------------------------------------------

    def open_ip(self, ip: str, protocol: Protocol) -> Lease:
        """A new connection from IP (before the greeting): Lease, or CapReached."""
        _check_protocol(protocol)
        key = ip_key(ip)
        cap = self.limits.access_connections_per_ip
        return self._take(f"access/{key}", cap, protocol, "ip", key,
                          f"Too many connections from your address ({cap} not logged in)")

    def open_user(self, account: Account, ip: str, protocol: Protocol) -> Lease:
        """ACCOUNT has just logged in from IP: Lease, or CapReached (the session must end)."""
        _check_protocol(protocol)
        cap = self.user_ip_cap(account)
        key = _user_key(account.address, ip)
        return self._take(key, cap, protocol, "user_ip", key,
                          f"Maximum number of connections from user+IP exceeded (IMAP and POP3: {cap})")

    def user_ip_cap(self, account: Account) -> int:
        cls: LimitClass = self.limits.classes.get(account.limit_class) or self.limits.classes["default"]
        return cls.access_connections_per_user_ip

    # --- introspection (tests) ---------------------------------------------------------------------

    def count_ip(self, ip: str) -> int:
        return self._open.get(f"access/{ip_key(ip)}", 0)

    def count_user(self, address: str, ip: str) -> int:
        return self._open.get(_user_key(address, ip), 0)

    # --- counting -----------------------------------------------------------------------------

    def _take(self, key: str, cap: int, protocol: Protocol, label: str, shown_key: str, text: str) -> Lease:
        n = self._open.get(key, 0)
        if n >= cap:
            # Same decision object and log format as the relay's limiter (appliance.ratelimit.limiter).
            verdict = Limited(Kind.CONNECTIONS, shown_key, f"{cap} concurrent", 1.0)
            # Twisted's log: the access service's log (Python logging is not set up in that process).
            log.msg(f"limited entry={protocol} {verdict.log_fields()}")
            REFUSED.labels(protocol, label).inc()
            raise CapReached(text, verdict)
        self._open[key] = n + 1
        LEASES.labels(protocol, label).inc()
        return Lease(self, key, protocol, label)

    def _drop(self, key: str) -> None:
        n = self._open.get(key, 0) - 1
        if n > 0:
            self._open[key] = n
        else:
            self._open.pop(key, None)


def _user_key(address: str, ip: str) -> str:
    return f"access/{ip_key(ip)}/{account_key(address)}"


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
