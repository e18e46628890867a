"""The fleet's shared limiter state in Redis (``[state] backend = "shared"``, docs/fleet.md).

Several relays of one ISP count against the same keys, so a customer gets one
allowance, not one per box. Every decision that two boxes could race on is one
Lua script, run atomically by Redis (EVALSHA; redis-py's ``Script`` loads it
again on NOSCRIPT, e.g. after a Redis restart), so two relays can never both
spend the last token:

- GCRA tables (``SharedGcra``): the theoretical arrival time per key, same
  arithmetic as ``gcra.Gcra``, with a TTL so a key that is equivalent to a
  fresh one disappears by itself;
- a message's reservation (``RESERVE``): message rate, recipient rate and the
  daily quota checked and taken in one step;
- daily quotas: keys ``…:daily:DAY:KEY`` that expire two days after their UTC day;
- connection counters (``CONN_OPEN``): a sorted set per key whose members are
  this fleet's open connections scored by their lease's end; each box refreshes
  the leases of its own connections every third of ``state.connection_lease``,
  so a box that crashed releases its slots when the lease runs out.

Time is the boxes' wall clock (NTP-synchronised), passed to each script: a
skew of d seconds between two boxes lets at most d / interval extra units pass.

Outage: a command that fails or exceeds ``state.redis_timeout`` raises
``StateUnavailable``; then for ``PROBE_INTERVAL`` seconds every call fails at once
without touching the network (a dead Redis costs one timeout per interval, not
one per session), and the next call after it probes again, so recovery needs
nobody. The policy pipeline answers ``451 4.3.0`` for a decision that raised.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from prometheus_client import Counter, Gauge
from redis.backoff import NoBackoff
from redis.retry import Retry

from appliance.config import Config
from appliance.ratelimit.decisions import StateUnavailable
from appliance.ratelimit.gcra import MAX_DEBT_WINDOWS, Rate
from appliance.ratelimit.store import (
    KNOWN_LOGIN_ADDRESSES,
    KNOWN_LOGIN_DAYS,
    KNOWN_RECIPIENT_DAYS,
    KNOWN_RECIPIENTS_PER_ACCOUNT,
    recipient_digest,
    utc_day,
)

if TYPE_CHECKING:
    from appliance.ratelimit.brake import _Event

log = logging.getLogger("appliance.ratelimit")

# Registered when this module is first imported, i.e. only by a relay with `state.backend = "shared"`
# (a local box has no such state, and a 0 would read as an outage).
SHARED_STATE_UP = Gauge(
    "relay_shared_state_up", "1 while the shared limiter's Redis answers, 0 while it is unreachable (new mail: 451)"
)
SHARED_STATE_ERRORS = Counter("relay_shared_state_errors", "Redis commands of the shared limiter that failed or timed out")

PREFIX = "appliance:"
PROBE_INTERVAL = 1.0  # seconds an unreachable Redis is not asked again
DAILY_KEEP = 2 * 86400  # a daily count lives this long after its UTC day began


def _f(x: float) -> str:
    return repr(float(x))


# One GCRA step. KEYS[1]: the key's TAT. ARGV: now, interval, capacity, cost, mode, max debt windows.
# Floats travel as strings: Redis would truncate a Lua number reply to an integer.
GCRA_LUA = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local capacity = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local mode = ARGV[5]
local stored = redis.call('GET', KEYS[1])
local function save(t)
  if t > now then
    redis.call('SET', KEYS[1], string.format('%.17g', t), 'PX', math.ceil((t - now) * 1000) + 1000)
  else
    redis.call('DEL', KEYS[1])
  end
end
if mode == 'refund' then
  if stored then save(tonumber(stored) - cost * interval) end
  return '0'
end
local tat = now
if stored then tat = math.max(tonumber(stored), now) end
local new = tat + cost * interval
local over = new - now - capacity
if mode == 'take' then
  if over > 1e-9 then return string.format('%.17g', over) end
  save(new)
elseif mode == 'hit' then
  save(math.min(new, now + capacity * tonumber(ARGV[6])))
elseif mode == 'schedule' then
  save(new)
end
if over > 1e-9 then return string.format('%.17g', over) end
return '0'
"""

# A message's reservation at end of DATA, all or nothing (limiter.py ``reserve``): the message rate and
# the daily quota are checked, then the recipient rate and the message rate taken and the daily count
# incremented. KEYS: message TAT, recipient TAT, daily count. ARGV: now, message interval, message capacity,
# recipient interval (0: not limited), recipient capacity, recipients, per_day (0: none), count daily (0/1),
# daily TTL ms. Returns {kind or '', wait, daily count}.
RESERVE_LUA = """
local now = tonumber(ARGV[1])
local mi, mc = tonumber(ARGV[2]), tonumber(ARGV[3])
local ri, rc, rn = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local per_day, count_daily = tonumber(ARGV[7]), ARGV[8] == '1'
local function tat(k)
  local v = redis.call('GET', k)
  if v then return math.max(tonumber(v), now) end
  return now
end
local function save(k, t)
  redis.call('SET', k, string.format('%.17g', t), 'PX', math.ceil((t - now) * 1000) + 1000)
end
local m_new = tat(KEYS[1]) + mi
local over = m_new - now - mc
if over > 1e-9 then return {'messages', string.format('%.17g', over), 0} end
local daily = tonumber(redis.call('GET', KEYS[3]) or '0')
if per_day > 0 and daily >= per_day then return {'daily', '0', daily} end
if ri > 0 then
  local r_new = tat(KEYS[2]) + rn * ri
  over = r_new - now - rc
  if over > 1e-9 then return {'recipients', string.format('%.17g', over), daily} end
  save(KEYS[2], r_new)
end
save(KEYS[1], m_new)
if count_daily then
  daily = redis.call('INCR', KEYS[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[9])
end
return {'', '0', daily}
"""

# The MAIL FROM decision in one round trip (limiter.py ``check_message``): would one more message pass the
# message rate, and is the daily quota not yet reached? Counts nothing. KEYS: message TAT, daily count.
# ARGV: now, interval, capacity, per_day (0: none). Returns {kind or '', wait}.
CHECK_LUA = """
local now = tonumber(ARGV[1])
local v = redis.call('GET', KEYS[1])
local tat = now
if v then tat = math.max(tonumber(v), now) end
local over = tat + tonumber(ARGV[2]) - now - tonumber(ARGV[3])
if over > 1e-9 then return {'messages', string.format('%.17g', over)} end
local per_day = tonumber(ARGV[4])
if per_day > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= per_day then return {'daily', '0'} end
return {'', '0'}
"""

# A message from outside the consortium (limiter.py ``outsider_message``): its address's and its network's
# allowance, checked together and, with take = 1, both taken or neither. KEYS: address TAT, network TAT.
# ARGV: now, address interval, capacity, network interval, capacity, take (0/1). Returns {refused key
# index (0: none), wait}.
OUTSIDER_LUA = """
local now = tonumber(ARGV[1])
local news = {}
for i = 1, 2 do
  local v = redis.call('GET', KEYS[i])
  local tat = now
  if v then tat = math.max(tonumber(v), now) end
  news[i] = tat + tonumber(ARGV[2 * i])
  local over = news[i] - now - tonumber(ARGV[2 * i + 1])
  if over > 1e-9 then return {i, string.format('%.17g', over)} end
end
if ARGV[6] == '1' then
  for i = 1, 2 do
    redis.call('SET', KEYS[i], string.format('%.17g', news[i]), 'PX', math.ceil((news[i] - now) * 1000) + 1000)
  end
end
return {0, '0'}
"""

# Give a reservation back. KEYS: message TAT, recipient TAT, daily count. ARGV: message interval,
# recipient interval (0: none), recipients, daily counted (0/1).
CANCEL_LUA = """
local function refund(k, amount)
  local v = redis.call('GET', k)
  if v then redis.call('SET', k, string.format('%.17g', tonumber(v) - amount), 'KEEPTTL') end
end
refund(KEYS[1], tonumber(ARGV[1]))
if tonumber(ARGV[2]) > 0 then refund(KEYS[2], tonumber(ARGV[2]) * tonumber(ARGV[3])) end
if ARGV[4] == '1' and tonumber(redis.call('GET', KEYS[3]) or '0') > 0 then redis.call('DECR', KEYS[3]) end
return 1
"""

# A connection slot under a lease. KEYS[1]: the key's open connections (sorted set, score = lease end).
# ARGV: now, cap, lease end, member, TTL ms. Returns 1 (counted) or 0 (at the cap).
CONN_OPEN_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


# The abuse brake's window of one account (brake.py), fleet-wide. KEYS: events (sorted set, score = when),
# release time. ARGV: now, window seconds, event member ('' to only read), most events kept, TTL seconds.
# Returns the members since max(now - window, release).
BRAKE_LUA = """
local now = tonumber(ARGV[1])
local start = now - tonumber(ARGV[2])
local reset = tonumber(redis.call('GET', KEYS[2]) or '0')
if reset > start then start = reset end
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[4]) - 1)
  redis.call('EXPIRE', KEYS[1], ARGV[5])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.17g', start))
return redis.call('ZRANGEBYSCORE', KEYS[1], string.format('%.17g', start), '+inf')
"""
# A flood of events cannot grow one account's window without bound (the rate limits keep it far below).
BRAKE_EVENTS_PER_ACCOUNT = 20_000


class RedisState:
    """The relay's one Redis client: short timeouts, no retries, and a breaker while Redis is down."""

    def __init__(self, cfg: Config, now: Callable[[], float] = time.monotonic) -> None:
        st = cfg.state
        self.url = st.redis_url
        self.lease = float(st.connection_lease)
        self.client = redis.Redis.from_url(
            st.redis_url,
            password=st.password("redis"),
            socket_timeout=st.redis_timeout,
            socket_connect_timeout=st.redis_timeout,
            # One attempt per call: a retry would multiply the time a session waits for a dead Redis.
            retry=Retry(NoBackoff(), 0),
            client_name=f"appliance-{cfg.box.hostname}",
            decode_responses=True,
        )
        self._now = now
        self._down_until = 0.0
        self._down = False
        self._lock = threading.Lock()  # the connection refresher thread calls too
        self.gcra = self.client.register_script(GCRA_LUA)
        self.check = self.client.register_script(CHECK_LUA)
        self.reserve = self.client.register_script(RESERVE_LUA)
        self.cancel = self.client.register_script(CANCEL_LUA)
        self.outsider = self.client.register_script(OUTSIDER_LUA)
        self.conn_open = self.client.register_script(CONN_OPEN_LUA)
        self.brake = self.client.register_script(BRAKE_LUA)
        SHARED_STATE_UP.set(1)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run FN (redis commands); StateUnavailable if Redis is down or fails."""
        if self._down and self._now() < self._down_until:
            raise StateUnavailable(f"{self.url}: unreachable (retried every {PROBE_INTERVAL:g}s)")
        try:
            result = fn()
        except (redis.RedisError, OSError) as exc:
            with self._lock:
                if not self._down:
                    log.error("shared state: Redis %s failed: %s; new mail gets 451 4.3.0 until it is back",
                              self.url, exc)
                self._down = True
                self._down_until = self._now() + PROBE_INTERVAL
            SHARED_STATE_UP.set(0)
            SHARED_STATE_ERRORS.inc()
            raise StateUnavailable(f"{self.url}: {exc}") from exc
        if self._down:
            with self._lock:
                if self._down:
                    log.warning("shared state: Redis %s is back", self.url)
                self._down = False
            SHARED_STATE_UP.set(1)
        return result

    def key(self, *parts: str) -> str:
        return PREFIX + ":".join(parts)

    def ping(self) -> None:
        self.call(self.client.ping)

    def close(self) -> None:
        self.client.close()


class SharedGcra:
    """``gcra.Gcra``'s interface over Redis: one table (PREFIX:gcra:NAME:KEY), one atomic step per call."""

    def __init__(self, state: RedisState, name: str, now: Callable[[], float]) -> None:
        self._state = state
        self._name = name
        self._now = now

    def key(self, key: str) -> str:
        return self._state.key("gcra", self._name, key)

    def _step(self, key: str, rate: Rate, cost: float, mode: str) -> float:
        args = (_f(self._now()), _f(rate.interval), _f(rate.capacity), _f(cost), mode, _f(MAX_DEBT_WINDOWS))
        out = self._state.call(lambda: self._state.gcra(keys=[self.key(key)], args=args))
        return float(out)

    def peek(self, key: str, rate: Rate, cost: float = 1) -> float:
        return self._step(key, rate, cost, "peek")

    def take(self, key: str, rate: Rate, cost: float = 1) -> float:
        return self._step(key, rate, cost, "take")

    def hit(self, key: str, rate: Rate, cost: float = 1) -> float:
        return self._step(key, rate, cost, "hit")

    def schedule(self, key: str, rate: Rate, cost: float = 1) -> float:
        return self._step(key, rate, cost, "schedule")

    def refund(self, key: str, rate: Rate, cost: float = 1) -> None:
        self._step(key, rate, cost, "refund")

    def reset(self, key: str) -> None:
        self._state.call(lambda: self._state.client.delete(self.key(key)))


def daily_key(state: RedisState, key: str, wall: float) -> str:
    return state.key("daily", utc_day(wall), key)


def daily_ttl_ms(wall: float) -> int:
    return int((DAILY_KEEP - wall % 86400) * 1000)


class SharedConnections:
    """Concurrent connections per key across the fleet, each under a lease this box refreshes."""

    def __init__(self, state: RedisState, now: Callable[[], float]) -> None:
        self._state = state
        self._now = now
        self._box = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self._lock = threading.Lock()
        self._mine: dict[str, list[str]] = {}  # key -> this box's open connections (members)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, name="conn-lease", daemon=True)
        self._thread.start()

    def _zkey(self, key: str) -> str:
        return self._state.key("conn", key)

    def open(self, key: str, cap: int) -> bool:
        """Count one connection for KEY unless the fleet already has CAP open; True if counted."""
        with self._lock:
            self._seq += 1
            member = f"{self._box}:{self._seq}"
        now = self._now()
        lease = self._state.lease
        args = (_f(now), cap, _f(now + lease), member, int(lease * 1000) + 1000)
        ok = self._state.call(lambda: self._state.conn_open(keys=[self._zkey(key)], args=args))
        if ok:
            with self._lock:
                self._mine.setdefault(key, []).append(member)
        return bool(ok)

    def close(self, key: str) -> None:
        with self._lock:
            mine = self._mine.get(key)
            if not mine:
                return
            member = mine.pop()
            if not mine:
                del self._mine[key]
        # If Redis is down the slot is not lost for good: its lease ends without refreshes.
        self._state.call(lambda: self._state.client.zrem(self._zkey(key), member))

    def count(self, key: str) -> int:
        now = self._now()
        return int(self._state.call(lambda: self._state.client.zcount(self._zkey(key), f"({_f(now)}", "+inf")))

    def refresh(self) -> None:
        """Extend the leases of this box's open connections (and restore them after a Redis restart)."""
        with self._lock:
            snapshot = [(k, list(v)) for k, v in self._mine.items()]
        if not snapshot:
            return
        now = self._now()
        lease = self._state.lease

        def run() -> None:
            pipe = self._state.client.pipeline(transaction=False)
            for key, members in snapshot:
                pipe.zadd(self._zkey(key), {m: now + lease for m in members})
                pipe.pexpire(self._zkey(key), int(lease * 1000) + 1000)
            pipe.execute()

        self._state.call(run)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self._state.lease / 3):
            try:
                self.refresh()
            except StateUnavailable as exc:
                log.warning("shared state: could not refresh connection leases: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class SharedBrakeWindow:
    """The abuse brake's recent events per account in Redis, so every relay's sending is judged together."""

    def __init__(self, state: RedisState, now: Callable[[], float]) -> None:
        self._state = state
        self._now = now

    def record(self, account: str, event: _Event | None, window: int) -> list[_Event]:
        """Add EVENT (None: only read) and return ACCOUNT's events in the window, since its last release."""
        from appliance.ratelimit.brake import _Event

        now = event.at if event is not None else self._now()
        member = f"{_f(event.at)}|{event.new}|{event.accepted}|{event.rejected}|{uuid.uuid4().hex[:12]}" if event else ""
        keys = [self._state.key("brake", account), self._state.key("brakereset", account)]
        args = (_f(now), window, member, BRAKE_EVENTS_PER_ACCOUNT, window + 60)
        found = self._state.call(lambda: self._state.brake(keys=keys, args=args))
        out = []
        for m in found:
            at, new, accepted, rejected, _ = m.split("|")
            out.append(_Event(float(at), int(new), int(accepted), int(rejected)))
        return out

    def forget(self, account: str) -> None:
        self._state.call(lambda: self._state.client.delete(self._state.key("brake", account)))


class SharedLimitStore:
    """``store.LimitStore``'s interface over Redis: daily counts, known recipients, login addresses, releases."""

    def __init__(self, state: RedisState, now: Callable[[], float] = time.time) -> None:
        self.state = state
        self._now = now

    # --- daily quotas ------------------------------------------------------------------

    def daily_count(self, key: str, wall: float) -> int:
        value = self.state.call(lambda: self.state.client.get(daily_key(self.state, key, wall)))
        return int(value or 0)

    def add_daily(self, key: str, wall: float, n: int = 1) -> int:
        dkey = daily_key(self.state, key, wall)

        def run() -> int:
            pipe = self.state.client.pipeline(transaction=True)
            pipe.incrby(dkey, n)
            pipe.pexpire(dkey, daily_ttl_ms(wall))
            return int(pipe.execute()[0])

        return int(self.state.call(run))

    # --- abuse brake -------------------------------------------------------------------

    def learn_recipients(self, account: str, recipients: list[str], wall: float) -> int:
        """Remember RECIPIENTS for ACCOUNT fleet-wide; return how many were first-time recipients."""
        zkey = self.state.key("known", account)
        digests = {recipient_digest(r): wall for r in recipients}
        if not digests:
            return 0

        def run() -> int:
            pipe = self.state.client.pipeline(transaction=True)
            pipe.zremrangebyscore(zkey, "-inf", f"({_f(wall - KNOWN_RECIPIENT_DAYS * 86400)}")
            pipe.zadd(zkey, digests, nx=True)
            # Keep the newest KNOWN_RECIPIENTS_PER_ACCOUNT (a cap on what one account can make us remember).
            pipe.zremrangebyrank(zkey, 0, -KNOWN_RECIPIENTS_PER_ACCOUNT - 1)
            pipe.expire(zkey, KNOWN_RECIPIENT_DAYS * 86400)
            return int(pipe.execute()[1])

        return int(self.state.call(run))

    def brake_reset_at(self, account: str) -> float:
        value = self.state.call(lambda: self.state.client.get(self.state.key("brakereset", account)))
        return float(value or 0.0)

    def mark_brake_reset(self, account: str, wall: float) -> None:
        self.state.call(lambda: self.state.client.set(self.state.key("brakereset", account), _f(wall),
                                                      ex=KNOWN_RECIPIENT_DAYS * 86400))

    # --- addresses an account logged in from -------------------------------------------

    def knows_login_address(self, account: str, address: str, wall: float) -> bool:
        last = self.state.call(lambda: self.state.client.zscore(self.state.key("logins", account), address))
        return last is not None and wall - float(last) < KNOWN_LOGIN_DAYS * 86400

    def login_addresses(self, account: str) -> set[str]:
        cutoff = self._now() - KNOWN_LOGIN_DAYS * 86400
        found = self.state.call(
            lambda: self.state.client.zrangebyscore(self.state.key("logins", account), f"({_f(cutoff)}", "+inf"))
        return set(found)

    def remember_login_address(self, account: str, address: str, wall: float) -> None:
        zkey = self.state.key("logins", account)

        def run() -> None:
            pipe = self.state.client.pipeline(transaction=True)
            pipe.zadd(zkey, {address: wall})
            pipe.zremrangebyrank(zkey, 0, -KNOWN_LOGIN_ADDRESSES - 1)
            pipe.expire(zkey, KNOWN_LOGIN_DAYS * 86400)
            pipe.execute()

        self.state.call(run)

    # --- LimitStore's lifecycle: nothing is written behind ------------------------------

    def flush(self, timeout: float = 60.0) -> None:
        return None

    def pending(self) -> int:
        return 0

    def close(self) -> None:
        self.state.close()


def probe(cfg: Config) -> str | None:
    """`appliance status`: None if the shared limiter's Redis answers PING now, else why not."""
    state = RedisState(cfg)
    try:
        state.ping()
    except StateUnavailable as exc:
        return f"Redis unreachable, new mail is answered 451 4.3.0: {exc}"
    finally:
        state.close()
    return None


def read_daily_count(cfg: Config, key: str, wall: float) -> int:
    """`appliance user limits`: KEY's count for WALL's UTC day, fleet-wide (StateUnavailable if Redis is down)."""
    state = RedisState(cfg)
    try:
        return SharedLimitStore(state).daily_count(key, wall)
    finally:
        state.close()
