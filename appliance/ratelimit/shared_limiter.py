"""The limiter of a fleet box: the same decisions as ``Limiter``, with the state in Redis (shared.py).

``Limiter.open`` returns one of these when ``state.backend = "shared"``. What
changes against the local limiter:

- message, recipient, connection-rate and AUTH-failure GCRA tables live in Redis;
- ``reserve`` is one script (message rate, recipient rate, daily quota), and the
  daily quota is counted there, at the reservation, so two relays can never both
  take a customer's last message of the day; ``cancel`` gives it back, ``commit``
  only reads the count;
- concurrent connections are counted fleet-wide under a lease.

While Redis is unreachable, message decisions raise ``StateUnavailable`` (the
client gets ``451 4.3.0``: never accepted without limits, never refused for good).
Connection and AUTH-failure limits fall back to this box's own memory, so
connections still get their greeting and IMAP/POP logins still work; the
mail itself waits for Redis.
"""

from __future__ import annotations

import logging

from appliance.config import Config
from appliance.ratelimit.clock import SYSTEM_CLOCK, Clock
from appliance.ratelimit.decisions import Kind, Limited, StateUnavailable
from appliance.ratelimit.gcra import Gcra, Rate
from appliance.ratelimit.keys import ip_key, net_key
from appliance.ratelimit.limiter import Limiter, SenderLimits
from appliance.ratelimit.shared import (
    RedisState,
    SharedConnections,
    SharedGcra,
    SharedLimitStore,
    _f,
    daily_key,
    daily_ttl_ms,
)
from appliance.ratelimit.store import seconds_to_utc_midnight
from appliance.registry.model import Member

log = logging.getLogger("appliance.ratelimit")


class FallbackGcra:
    """A shared GCRA table that falls back to this box's memory while Redis is down (connections, AUTH, pacing)."""

    def __init__(self, shared: SharedGcra, local: Gcra) -> None:
        self.shared = shared
        self.local = local

    def peek(self, key: str, rate: Rate, cost: float = 1) -> float:
        try:
            return self.shared.peek(key, rate, cost)
        except StateUnavailable:
            return self.local.peek(key, rate, cost)

    def hit(self, key: str, rate: Rate, cost: float = 1) -> float:
        try:
            return self.shared.hit(key, rate, cost)
        except StateUnavailable:
            return self.local.hit(key, rate, cost)

    def schedule(self, key: str, rate: Rate, cost: float = 1) -> float:
        try:
            return self.shared.schedule(key, rate, cost)
        except StateUnavailable:  # already-spooled mail keeps going out, paced by this box alone
            return self.local.schedule(key, rate, cost)


class SharedLimiter(Limiter):
    store: SharedLimitStore  # type: ignore[assignment]

    def __init__(self, cfg: Config, state: RedisState, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(cfg, SharedLimitStore(state, clock.time), clock)  # type: ignore[arg-type]
        self.state = state
        wall = clock.time  # every box's clock: monotonic clocks are not comparable between boxes
        self._messages = SharedGcra(state, "msg", wall)  # type: ignore[assignment]
        self._recipients = SharedGcra(state, "rcpt", wall)  # type: ignore[assignment]
        self._conn_rate = FallbackGcra(SharedGcra(state, "connrate", wall), Gcra(clock.monotonic))  # type: ignore[assignment]
        self._auth = FallbackGcra(SharedGcra(state, "auth", wall), Gcra(clock.monotonic))  # type: ignore[assignment]
        self.connections = SharedConnections(state, wall)

    @classmethod
    def open_shared(cls, cfg: Config, clock: Clock = SYSTEM_CLOCK) -> SharedLimiter:
        return cls(cfg, RedisState(cfg), clock)

    def close(self) -> None:
        self.connections.stop()
        self.store.close()

    # --- connections: fleet-wide under a lease; this box's memory while Redis is down -------------

    def connection_opened(self, ip: str, member: Member | None = None, entry: str = "smtp") -> Limited | None:
        key, cap = self._conn_key(ip, member)
        if member is None:
            wait = self._conn_rate.hit(key, self._conn_rate_limit)
            if wait:
                return self._limited(Kind.CONNECTION_RATE, key, self._conn_rate_limit.describe(), wait, entry)
        try:
            counted = self.connections.open(key, cap)
        except StateUnavailable:
            return self._open_local(key, cap, entry)
        if not counted:
            return self._limited(Kind.CONNECTIONS, key, f"{cap} concurrent", 1.0, entry)
        return None

    def _open_local(self, key: str, cap: int, entry: str) -> Limited | None:
        n = self._open.get(key, 0)
        if n >= cap:
            return self._limited(Kind.CONNECTIONS, key, f"{cap} concurrent", 1.0, entry)
        self._open[key] = n + 1
        return None

    def connection_closed(self, ip: str, member: Member | None = None) -> None:
        key, _ = self._conn_key(ip, member)
        if self._open.get(key):  # counted here while Redis was down
            super().connection_closed(ip, member)
            return
        try:
            self.connections.close(key)
        except StateUnavailable as exc:  # its lease runs out without refreshes
            log.warning("shared state: connection of %s not released now (%s); its lease ends it", key, exc)

    def open_connections(self, ip: str, member: Member | None = None) -> int:
        key = self._conn_key(ip, member)[0]
        return self.connections.count(key) + self._open.get(key, 0)

    # --- AUTH: an address whose history cannot be read counts as new (the strict allowance) ---------

    def _knows_address(self, account: str, addr: str) -> bool:
        try:
            return super()._knows_address(account, addr)
        except StateUnavailable:
            return False

    def auth_success(self, ip: str, login: str) -> None:
        try:
            super().auth_success(ip, login)
        except StateUnavailable as exc:
            log.warning("shared state: login address of %s not remembered: %s", login, exc)

    # --- a message: one atomic reservation, the daily quota counted in it ----------------------------

    def check_message(self, s: SenderLimits, entry: str = "smtp") -> Limited | None:
        """At MAIL FROM: the message rate and the daily quota in one round trip. Counts nothing."""
        wall = self.clock.time()
        keys = [self._messages.key(s.key), daily_key(self.state, s.key, wall)]  # type: ignore[attr-defined]
        args = (_f(wall), _f(s.messages.interval), _f(s.messages.capacity), s.per_day)
        kind, wait = self.state.call(lambda: self.state.check(keys=keys, args=args))
        if kind == "messages":
            return self._limited(Kind.MESSAGES, s.key, s.messages.describe(), float(wait), entry)
        if kind == "daily":
            return self._limited(Kind.DAILY, s.key, f"{s.per_day}/day", seconds_to_utc_midnight(wall), entry)
        return None

    def reserve(self, s: SenderLimits, recipients: int, entry: str = "smtp") -> Limited | None:
        wall = self.clock.time()
        r = s.recipients
        args = (
            _f(wall), _f(s.messages.interval), _f(s.messages.capacity),
            _f(r.interval if r else 0), _f(r.capacity if r else 0), recipients,
            s.per_day, "1" if s.key.startswith("acct:") else "0", daily_ttl_ms(wall),
        )
        keys = [self._messages.key(s.key), self._recipients.key(s.key), daily_key(self.state, s.key, wall)]  # type: ignore[attr-defined]
        kind, wait, _count = self.state.call(lambda: self.state.reserve(keys=keys, args=args))
        if not kind:
            return None
        if kind == "daily":
            return self._limited(Kind.DAILY, s.key, f"{s.per_day}/day", seconds_to_utc_midnight(wall), entry)
        if kind == "recipients" and r is not None:
            return self._limited(Kind.RECIPIENTS, s.key, r.describe(), float(wait), entry)
        return self._limited(Kind.MESSAGES, s.key, s.messages.describe(), float(wait), entry)

    def outsider_message(self, ip: str, entry: str = "mx", *, take: bool = False) -> Limited | None:
        """An outside client's message: its address's and its network's allowance in one script."""
        buckets = ((ip_key(ip), self._outsider_ip), (net_key(ip), self._outsider_net))
        keys = [self._messages.key(k) for k, _ in buckets]  # type: ignore[attr-defined]
        args = (_f(self.clock.time()), *(_f(x) for _, r in buckets for x in (r.interval, r.capacity)),
                "1" if take else "0")
        refused, wait = self.state.call(lambda: self.state.outsider(keys=keys, args=args))
        if not refused:
            return None
        key, rate = buckets[int(refused) - 1]
        return self._limited(Kind.OUTSIDER_MESSAGES, key, rate.describe(), float(wait), entry)

    def commit(self, s: SenderLimits) -> int:
        """The message is on disk; its daily count was taken by ``reserve``. Returns today's count."""
        if not s.key.startswith("acct:"):
            return 0
        try:
            return self.store.daily_count(s.key, self.clock.time())
        except StateUnavailable:
            return 0  # the message is accepted and counted; only the number is unknown

    def cancel(self, s: SenderLimits, recipients: int) -> None:
        wall = self.clock.time()
        r = s.recipients
        keys = [self._messages.key(s.key), self._recipients.key(s.key), daily_key(self.state, s.key, wall)]  # type: ignore[attr-defined]
        args = (_f(s.messages.interval), _f(r.interval if r else 0), recipients,
                "1" if s.key.startswith("acct:") else "0")
        try:
            self.state.call(lambda: self.state.cancel(keys=keys, args=args))
        except StateUnavailable as exc:  # the units stay taken: stricter, never looser
            log.warning("shared state: reservation of %s not given back: %s", s.key, exc)
