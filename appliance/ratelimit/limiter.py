"""The one limiter of the box: every entry point asks it, so quotas cannot be doubled.

The relay process owns a single ``Limiter``: port 25 (per member), 587/465 (per
account) and the internal socket used by IMAP/POP sends (per account, the same
keys as SMTP submission) all call the same methods, and IMAP/POP login failures
reach ``auth_failure`` through the socket's XAUTHFAIL verb.

Counting rules (DESIGN.md "Rate limits"): connections and AUTH failures count
every attempt; messages and recipients count when accepted. To stay exact under
concurrent sessions a message's units are *reserved* atomically just before the
spool write (``reserve``) and either committed (``commit``: daily quota) or given
back (``cancel``) when the spool did not take it.

Every decision is made in memory and costs no I/O: the persistent parts (daily
counts, addresses an account logged in from) are kept by ``LimitStore``, which
loads them once when opened and writes changes behind in its own thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from appliance.accounts import Account
from appliance.addresses import AddressError, normalize_address
from appliance.config import Config
from appliance.ratelimit import metrics
from appliance.ratelimit.clock import SYSTEM_CLOCK, Clock
from appliance.ratelimit.decisions import Kind, Limited
from appliance.ratelimit.gcra import Gcra, Rate
from appliance.ratelimit.keys import account_key, ip_key, member_key, net_key
from appliance.ratelimit.store import LimitStore, limits_db, seconds_to_utc_midnight
from appliance.registry.model import Member

log = logging.getLogger("appliance.ratelimit")

DEFAULT_MEMBER_CONNECTIONS = 20
MAX_LOGIN = 320  # longest address (RFC 5321 4.5.3.1: 64 + 1 + 255)


@dataclass(frozen=True, slots=True)
class SenderLimits:
    """Whose sending is counted and how much it may send."""

    key: str  # acct:LOGIN or member:ID
    messages: Rate
    recipients: Rate | None  # None: recipients are not rate-limited (members)
    per_day: int  # 0: no daily quota


class Limiter:
    def __init__(self, cfg: Config, store: LimitStore, clock: Clock = SYSTEM_CLOCK) -> None:
        self.cfg = cfg
        self.limits = cfg.limits
        self.max_recipients = cfg.relay.max_recipients
        self.store = store
        self.clock = clock
        now = clock.monotonic
        self._messages = Gcra(now)
        self._recipients = Gcra(now)
        self._conn_rate = Gcra(now)
        self._auth = Gcra(now)
        self._open: dict[str, int] = {}
        lim = cfg.limits
        self._conn_rate_limit = Rate(lim.connection_rate_per_ip, lim.connection_burst_per_ip)
        # N failures per window: the window refills at N per window, N at once.
        self._auth_limit = Rate(lim.auth_failures_per_ip * 60.0 / lim.auth_failure_window, lim.auth_failures_per_ip)
        self._member_default = Rate(lim.member_default_per_minute, lim.member_default_burst)
        self._outsider_ip = Rate(lim.outsider_messages_per_minute_per_ip, lim.outsider_burst_per_ip)
        self._outsider_net = Rate(lim.outsider_messages_per_minute_per_net, lim.outsider_burst_per_net)
        self._class_limits: dict[tuple[object, ...], SenderLimits] = {}

    @classmethod
    def open(cls, cfg: Config, clock: Clock = SYSTEM_CLOCK) -> Limiter:
        """The box's limiter: in-process and SQLite (`state.backend = "local"`), or Redis (`"shared"`)."""
        if cfg.state.backend == "shared":
            from appliance.ratelimit.shared_limiter import SharedLimiter

            return SharedLimiter.open_shared(cfg, clock)
        return cls(cfg, LimitStore(limits_db(cfg), clock.time), clock)

    def close(self) -> None:
        self.store.close()

    def _limited(self, kind: Kind, key: str, limit: str, retry: float, entry: str) -> Limited:
        verdict = Limited(kind, key, limit, retry)
        log.info("limited entry=%s %s", entry, verdict.log_fields())
        metrics.LIMITED.labels(kind.value, entry).inc()
        return verdict

    # --- connections (before the banner) ----------------------------------------------------

    def _conn_key(self, ip: str, member: Member | None) -> tuple[str, int]:
        if member is not None:
            cap = member.limits.connections if member.limits else self.limits.member_default_connections
            return member_key(member.id), cap
        return ip_key(ip), self.limits.connections_per_ip

    def connection_opened(self, ip: str, member: Member | None = None, entry: str = "smtp") -> Limited | None:
        """Count a new connection. None: go ahead (call ``connection_closed`` at the end); else 421 and close.

        A member's hosts share the member's concurrency cap from the registry and are
        not rate-limited per address (a member has many hosts and relays for many).
        """
        key, cap = self._conn_key(ip, member)
        if member is None:
            wait = self._conn_rate.hit(key, self._conn_rate_limit)
            if wait:
                return self._limited(Kind.CONNECTION_RATE, key, self._conn_rate_limit.describe(), wait, entry)
        n = self._open.get(key, 0)
        if n >= cap:
            # No time can be promised for a concurrency cap; a short retry is honest.
            return self._limited(Kind.CONNECTIONS, key, f"{cap} concurrent", 1.0, entry)
        self._open[key] = n + 1
        return None

    def connection_closed(self, ip: str, member: Member | None = None) -> None:
        key, _ = self._conn_key(ip, member)
        n = self._open.get(key, 0) - 1
        if n > 0:
            self._open[key] = n
        else:
            self._open.pop(key, None)

    def open_connections(self, ip: str, member: Member | None = None) -> int:
        return self._open.get(self._conn_key(ip, member)[0], 0)

    # --- AUTH failures (SMTP AUTH, IMAP LOGIN, POP USER/PASS) ---------------------------------
    #
    # Two limits, both temporary (GCRA refills; nothing is ever locked for good):
    # - per client address (IPv6 /64): `auth_failures_per_ip` per window, then 421 and close;
    # - per account, against credential stuffing from many addresses: failures from
    #   addresses the account never logged in from share one strict allowance
    #   (`auth_failures_per_account_new`); failures from addresses it did log in from
    #   share a lenient one (`auth_failures_per_account_known`). An attacker on new
    #   addresses can use up only the first, so the real user, logging in from where they
    #   did before, is never refused because of them.
    # A refused attempt is not verified (no argon2 work) and counts against its address,
    # not against the account, so a refusal cannot prolong itself.

    def auth_check(self, ip: str, entry: str = "smtp", *, login: str | None = None) -> Limited | None:
        """Before verifying a password: may this address (and, given LOGIN, try this account) now?"""
        key = ip_key(ip)
        wait = self._auth.peek(key, self._auth_limit)
        if wait:
            return self._limited(Kind.AUTH_FAILURES, key, self._auth_desc(), wait, entry)
        if login is None:
            return None
        akey, rate, desc = self._account_bucket(login, key)
        wait = self._auth.peek(akey, rate)
        if wait:
            self._auth.hit(key, self._auth_limit)
            return self._limited(Kind.AUTH_ACCOUNT, akey, desc, wait, entry)
        return None

    def auth_failure(self, ip: str, entry: str = "smtp", *, login: str | None = None) -> Limited | None:
        """Count a failed login; once the address has used up its allowance, 421 and close.

        The account's allowance is counted too; it refuses the *next* attempt (``auth_check``).
        """
        key = ip_key(ip)
        self._auth.hit(key, self._auth_limit)
        if login is not None:
            akey, rate, _ = self._account_bucket(login, key)
            self._auth.hit(akey, rate)
        wait = self._auth.peek(key, self._auth_limit)
        if wait:
            return self._limited(Kind.AUTH_FAILURES, key, self._auth_desc(), wait, entry)
        return None

    def auth_success(self, ip: str, login: str) -> None:
        """LOGIN logged in from IP: remember the address (persisted), so it gets the lenient limit."""
        self.store.remember_login_address(_login_name(login), ip_key(ip), self.clock.time())

    def _account_bucket(self, login: str, addr: str) -> tuple[str, Rate, str]:
        account = _login_name(login)
        window = self.limits.auth_failure_window
        if self._knows_address(account, addr):
            n = self.limits.auth_failures_per_account_known
            return f"authknown:{account}", Rate(n * 60.0 / window, n), f"{n} per {window}s from known addresses"
        n = self.limits.auth_failures_per_account_new
        return f"authnew:{account}", Rate(n * 60.0 / window, n), f"{n} per {window}s from new addresses"

    def _knows_address(self, account: str, addr: str) -> bool:
        return self.store.knows_login_address(account, addr, self.clock.time())

    def _auth_desc(self) -> str:
        return f"{self.limits.auth_failures_per_ip} per {self.limits.auth_failure_window}s"

    # --- who is sending ---------------------------------------------------------------------

    def customer(self, account: Account) -> SenderLimits:
        """An account's limits: its override if set, else its class (unknown class: `default`)."""
        cache_key = (account.address, account.limit_class, account.override)
        hit = self._class_limits.get(cache_key)
        if hit is not None:
            return hit
        cls = self.limits.classes.get(account.limit_class) or self.limits.classes["default"]
        if account.override is not None:
            o = account.override
            per_day = cls.per_day if o.per_day is None else o.per_day
            messages = Rate(o.per_minute, o.burst)
        else:
            per_day = cls.per_day
            messages = Rate(cls.messages_per_minute, cls.burst)
        # One message may carry up to relay.max_recipients, so that is the recipient burst.
        recipients = Rate(cls.recipients_per_minute, max(self.max_recipients, 1))
        limits = SenderLimits(account_key(account.address), messages, recipients, per_day)
        if len(self._class_limits) > 10_000:
            self._class_limits.clear()
        self._class_limits[cache_key] = limits
        return limits

    def member(self, member: Member) -> SenderLimits:
        rate = Rate(member.limits.messages_per_minute, member.limits.burst) if member.limits else self._member_default
        return SenderLimits(member_key(member.id), rate, None, 0)

    # --- decisions per transaction ----------------------------------------------------------

    def check_message(self, s: SenderLimits, entry: str = "smtp") -> Limited | None:
        """At MAIL FROM: would one more message pass? Counts nothing."""
        wait = self._messages.peek(s.key, s.messages)
        if wait:
            return self._limited(Kind.MESSAGES, s.key, s.messages.describe(), wait, entry)
        if s.per_day:
            wall = self.clock.time()
            if self.store.daily_count(s.key, wall) >= s.per_day:
                return self._limited(Kind.DAILY, s.key, f"{s.per_day}/day", seconds_to_utc_midnight(wall), entry)
        return None

    def check_recipient(self, s: SenderLimits, count: int, entry: str = "smtp") -> Limited | None:
        """At RCPT TO: COUNT is the transaction's recipients including this one. Counts nothing."""
        if count > self.max_recipients:
            return self._limited(Kind.RECIPIENTS_PER_MESSAGE, s.key, f"{self.max_recipients} per message", 0.0, entry)
        if s.recipients is not None:
            wait = self._recipients.peek(s.key, s.recipients, count)
            if wait:
                return self._limited(Kind.RECIPIENTS, s.key, s.recipients.describe(), wait, entry)
        return None

    def reserve(self, s: SenderLimits, recipients: int, entry: str = "smtp") -> Limited | None:
        """At end of DATA, before the spool write: take the message's units atomically.

        None: reserved; the caller must ``commit`` once the message is on disk or
        ``cancel`` if it is not. Otherwise nothing is taken.
        """
        refused = self.check_message(s, entry)
        if refused:
            return refused
        if s.recipients is not None:
            wait = self._recipients.take(s.key, s.recipients, recipients)
            if wait:
                return self._limited(Kind.RECIPIENTS, s.key, s.recipients.describe(), wait, entry)
        wait = self._messages.take(s.key, s.messages)
        if wait:  # pragma: no cover - check_message just said it passes, and nothing ran in between
            if s.recipients is not None:
                self._recipients.refund(s.key, s.recipients, recipients)
            return self._limited(Kind.MESSAGES, s.key, s.messages.describe(), wait, entry)
        return None

    # --- mail from outside the consortium (relay.outsiders = "verify") -----------------------

    def outsider_message(self, ip: str, entry: str = "mx", *, take: bool = False) -> Limited | None:
        """One message from an outside client: its address and its /24 (IPv6 /48) each have a GCRA allowance.

        TAKE False (MAIL): would it pass? Counts nothing. TAKE True (end of DATA, verified): take one
        unit from both, or none if either is used up. A refused message is not counted.
        """
        buckets = ((ip_key(ip), self._outsider_ip), (net_key(ip), self._outsider_net))
        for key, rate in buckets:
            wait = self._messages.peek(key, rate)
            if wait:
                return self._limited(Kind.OUTSIDER_MESSAGES, key, rate.describe(), wait, entry)
        if take:
            for key, rate in buckets:
                self._messages.take(key, rate)
        return None

    def commit(self, s: SenderLimits) -> int:
        """The reserved message is on disk: count it against the daily quota. Returns today's count."""
        if s.key.startswith("acct:"):  # kept for every account, so `appliance user limits` can show it
            return self.store.add_daily(s.key, self.clock.time())
        return 0

    def cancel(self, s: SenderLimits, recipients: int) -> None:
        """The reserved message was not accepted: give its units back."""
        self._messages.refund(s.key, s.messages)
        if s.recipients is not None:
            self._recipients.refund(s.key, s.recipients, recipients)

    def daily_count(self, s: SenderLimits) -> int:
        return self.store.daily_count(s.key, self.clock.time())


def _login_name(login: str) -> str:
    """The account a login names, as the accounts database spells it (bounded: logins are client input)."""
    try:
        return normalize_address(login[:MAX_LOGIN])
    except AddressError:
        return login[:MAX_LOGIN].strip().lower()
