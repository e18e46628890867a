"""The abuse brake: hold an account whose recent sending looks compromised.

A stolen password shows up as an account that suddenly writes to many people it
has never written to, or whose recipients are refused or bounce. Over the last
``limits.abuse_brake.window`` seconds the brake counts, per account:

- first-time recipients (never accepted for this account before; remembered in
  the limiter's SQLite file, so a restart does not make everyone "new");
- recipients accepted, and recipients refused at RCPT or bounced later.

It holds the account (``AccountStore.hold``) when the first-time count reaches
``new_recipients``, or when at least ``min_sample`` recipients were tried and the
refused/bounced share reaches ``rejected_ratio``.

A held account's new mail is **deferred** (``450 4.7.1``), not parked: nothing
from a possibly compromised account sits on the box waiting to be sent in one
wave after a release, the legitimate user's client keeps the message and retries
(SMTP clients and Outbox folders retry 4xx), and a false positive is undone by
``appliance user release`` alone. The postmaster gets a message in their
Maildir; `appliance status` lists held accounts.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.accounts import AccountStore
from appliance.config import AbuseBrakeConfig, Config
from appliance.ratelimit import metrics
from appliance.ratelimit.clock import SYSTEM_CLOCK, Clock
from appliance.ratelimit.notify import notify_postmaster
from appliance.ratelimit.store import LimitStore

if TYPE_CHECKING:
    from appliance.ratelimit.shared import SharedBrakeWindow

log = logging.getLogger("appliance.ratelimit")

RESET_CHECK_TIMEOUT = 10.0  # seconds a hold waits to learn of a release written meanwhile


@dataclass(slots=True)
class _Event:
    at: float
    new: int
    accepted: int
    rejected: int


@dataclass(frozen=True)
class Tally:
    new: int
    accepted: int
    rejected: int


class AbuseBrake:
    def __init__(
        self,
        cfg: Config,
        store: LimitStore,
        accounts: AccountStore,
        clock: Clock = SYSTEM_CLOCK,
        writer: concurrent.futures.Executor | None = None,
        shared_window: SharedBrakeWindow | None = None,
    ) -> None:
        self.cfg = cfg
        # `state.backend = "shared"`: the window lives in Redis, so what an account sends through every
        # relay of the fleet is judged together (shared.SharedBrakeWindow); else in this process.
        self.shared_window = shared_window
        # Where holds are written. The relay passes a single writer thread: a hold is a
        # SQLite write that may wait for the lock (``accounts.BUSY_TIMEOUT``), and the
        # brake is fed from the event loop. None: write in the caller's thread.
        self.writer = writer
        self.conf: AbuseBrakeConfig = cfg.limits.abuse_brake
        self.store = store
        self.accounts = accounts
        self.clock = clock
        self._events: dict[str, deque[_Event]] = {}

    # --- what happened --------------------------------------------------------------------

    def record_accepted(self, account: str, recipients: list[str]) -> str | None:
        """A message from ACCOUNT to RECIPIENTS is on disk. Returns the hold reason if this tripped the brake."""
        if not self.conf.enabled:
            return None
        now = self.clock.time()
        new = self.store.learn_recipients(account, recipients, now)
        return self._record(account, _Event(now, new, len(recipients), 0))

    def record_rejected(self, account: str, count: int = 1) -> str | None:
        """COUNT recipients of ACCOUNT were refused at RCPT or bounced (5xx) on delivery."""
        if not self.conf.enabled:
            return None
        return self._record(account, _Event(self.clock.time(), 0, 0, count))

    def tally(self, account: str) -> Tally:
        events = self._window(account)
        return Tally(
            sum(e.new for e in events), sum(e.accepted for e in events), sum(e.rejected for e in events)
        )

    def reset(self, account: str) -> None:
        """Forget ACCOUNT's window (also done on the next event after `appliance user release`)."""
        self._events.pop(account, None)
        if self.shared_window is not None:
            self.shared_window.forget(account)

    # --- judging --------------------------------------------------------------------------

    def _window(self, account: str, add: _Event | None = None) -> deque[_Event]:
        if self.shared_window is not None:
            return deque(self.shared_window.record(account, add, self.conf.window))
        if add is not None:
            self._events.setdefault(account, deque()).append(add)
        events = self._events.get(account)
        if events is None:
            return deque()
        # Events before the window, or before the last release, no longer count.
        start = max(self.clock.time() - self.conf.window, self.store.brake_reset_at(account))
        while events and events[0].at < start:
            events.popleft()
        return events

    def _record(self, account: str, event: _Event) -> str | None:
        events = list(self._window(account, event))  # a copy: the writer thread must not share the deque
        t = Tally(sum(e.new for e in events), sum(e.accepted for e in events), sum(e.rejected for e in events))
        reason = self._judge(t)
        if reason is None:
            return None
        if self.writer is None:
            self._hold(account, events)
        else:
            self.writer.submit(self._hold, account, events)
        return reason

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until the limiter's changes and every hold submitted so far are written (shutdown, tests).

        Also makes a release written by another process (`appliance user release`) visible.
        """
        self.store.flush(timeout)
        if self.writer is not None:
            self.writer.submit(lambda: None).result(timeout)

    def _hold(self, account: str, events: list[_Event]) -> None:
        # A release may have been written by `appliance user release` since the loop judged:
        # the loop learns of it one batch later, here it is read first (off the loop) and the
        # events before it no longer count, so a release is never followed by a stale hold.
        try:
            self.store.flush(RESET_CHECK_TIMEOUT)
        except (TimeoutError, concurrent.futures.TimeoutError) as exc:  # judge on what is known
            log.warning("abuse brake: could not check for a release of account=%s: %s", account, exc)
        try:
            reset = self.store.brake_reset_at(account)
        except Exception as exc:  # the shared limiter's Redis is down: the next event judges again
            log.error("abuse brake: could not check for a release of account=%s: %s", account, exc)
            metrics.BRAKE_HOLD_ERRORS.inc()
            return
        kept = [e for e in events if e.at >= reset]
        t = Tally(sum(e.new for e in kept), sum(e.accepted for e in kept), sum(e.rejected for e in kept))
        reason = self._judge(t)
        if reason is None:
            log.info("abuse brake: account=%s was released meanwhile; not held", account)
            return
        try:
            newly = self.accounts.hold(account, reason)
        except Exception as exc:  # the next event retries the hold (it is idempotent)
            log.error("abuse brake: could not hold account=%s: %s", account, exc)
            metrics.BRAKE_HOLD_ERRORS.inc()
            return
        if newly:
            self._on_hold(account, reason, t)

    def _judge(self, t: Tally) -> str | None:
        c = self.conf
        if t.new >= c.new_recipients:
            return f"{t.new} first-time recipients in {c.window}s (threshold {c.new_recipients})"
        tried = t.accepted + t.rejected
        if tried >= c.min_sample and t.rejected / tried >= c.rejected_ratio:
            return (
                f"{t.rejected} of {tried} recipients refused or bounced in {c.window}s"
                f" (threshold {c.rejected_ratio:.0%})"
            )
        return None

    def _on_hold(self, account: str, reason: str, t: Tally) -> None:
        log.warning("abuse brake: held account=%s reason=%r", account, reason)
        metrics.BRAKE_HOLDS.inc()
        body = (
            f"The abuse brake has held the account {account}.\n\n"
            f"Reason: {reason}\n"
            f"In the last {self.conf.window} seconds: {t.accepted} recipients accepted, "
            f"{t.new} of them first-time, {t.rejected} refused or bounced.\n\n"
            "While held, new mail from this account is deferred with 450 4.7.1 (nothing is\n"
            "lost: the sender's client keeps it and retries). Mail accepted before the hold\n"
            "stays in the queue.\n\n"
            "If the account is compromised, change its password first:\n"
            f"    appliance user passwd {account}\n"
            "Then (or if this was a false positive) let it send again:\n"
            f"    appliance user release {account}\n"
        )
        try:
            notify_postmaster(self.cfg, f"[{self.cfg.box.hostname}] account {account} held by the abuse brake", body)
        except OSError as exc:  # the hold itself stands; say why the note is missing
            log.error("abuse brake: could not notify postmaster about %s: %s", account, exc)


def release(cfg: Config, accounts: AccountStore, address: str, clock: Clock = SYSTEM_CLOCK) -> None:
    """`appliance user release`: lift the hold and reset the brake's window for the account.

    The reset is written to the limiter's SQLite file; the relay's limiter writer
    thread notices the change (``PRAGMA data_version``) within one batch interval
    and before writing any hold, so the events that tripped the brake cannot trip
    it again a moment later.
    """
    from appliance.addresses import normalize_address
    from appliance.ratelimit.store import limits_db, mark_brake_reset

    if cfg.state.backend == "shared":  # the fleet's relays read releases from Redis (docs/fleet.md)
        from appliance.ratelimit.shared import RedisState, SharedLimitStore

        # The reset first: if Redis is down the command fails (StateUnavailable) with the hold still
        # in place, rather than lifting it while the events that tripped it still count.
        state = RedisState(cfg)
        try:
            SharedLimitStore(state).mark_brake_reset(normalize_address(address), clock.time())
        finally:
            state.close()
        accounts.release(address)
        return
    accounts.release(address)
    mark_brake_reset(limits_db(cfg), normalize_address(address), clock.time())
