"""Rate limits at every entry point: one limiter for port 25, 587/465 and the internal socket.

Placed after the access checks, so only attempts that would otherwise be
accepted are counted against message and recipient rates. What is counted
(appliance/ratelimit/limiter.py):

- connect: concurrent connections and the connection rate per client address
  (members: concurrent connections per member, from the registry) -> ``421 4.7.0``;
- AUTH check / failure (SMTP AUTH, and IMAP/POP logins via XAUTHCHECK/XAUTHFAIL)
  per client address -> ``421 4.7.0``, and per account (new addresses strictly,
  addresses it logged in from before leniently) -> ``454 4.7.0`` (RFC 4954 6:
  temporary authentication failure); successes (XAUTHOK) teach the known addresses;
- MAIL / RCPT: would the message or recipient rate, or the daily quota, be
  exceeded? -> ``450 4.7.1 ... retry in N s`` (nothing is counted yet);
- end of DATA: the message's units are reserved atomically; committed in
  ``on_accepted`` (after the spool write), given back if it was not accepted.

Customers are keyed by account (so SMTP, IMAP and POP sends share one quota),
members by member id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.policy.check import Check
from appliance.policy.verdicts import (
    RATE_AUTH_ACCOUNT,
    RATE_AUTH_FAILURES,
    RATE_CONNECTION_RATE,
    RATE_CONNECTIONS,
    RATE_DAILY,
    RATE_MESSAGES,
    RATE_RECIPIENTS,
    TOO_MANY_RECIPIENTS,
    Reply,
    Verdict,
)
from appliance.ratelimit import Kind, Limited, SenderLimits
from appliance.ratelimit.runtime import for_config

if TYPE_CHECKING:
    from appliance.message import Message
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Envelope, Session

_REPLIES: dict[Kind, Reply] = {
    Kind.CONNECTIONS: RATE_CONNECTIONS,
    Kind.CONNECTION_RATE: RATE_CONNECTION_RATE,
    Kind.AUTH_FAILURES: RATE_AUTH_FAILURES,
    Kind.AUTH_ACCOUNT: RATE_AUTH_ACCOUNT,
    Kind.MESSAGES: RATE_MESSAGES,
    Kind.RECIPIENTS: RATE_RECIPIENTS,
    Kind.DAILY: RATE_DAILY,
}


def shown_key(key: str) -> str:
    kind, _, value = key.partition(":")
    return f"member {value}" if kind == "member" else value


def entry_of(session: Session) -> str:
    """Metrics label: the listener, or imap/pop for sends that came through the internal socket."""
    return session.protocol if session.listener == "internal" else session.listener


@dataclass
class _Notes:
    counted_connection: bool = False
    sender: SenderLimits | None = None
    reserved: int | None = None  # recipients of a reserved, not yet accepted message
    rcpt_limited: int = 0  # RCPTs this check refused (temporary; the abuse brake does not count them)


class Limits(Check):
    name = "limits"

    def __init__(self, ctx: PolicyContext) -> None:
        self.limiter = for_config(ctx.cfg).limiter

    def _verdict(self, limited: Limited) -> Verdict:
        if limited.kind is Kind.RECIPIENTS_PER_MESSAGE:
            return TOO_MANY_RECIPIENTS.verdict(self.name, limit=self.limiter.max_recipients)
        return _REPLIES[limited.kind].verdict(
            self.name, key=shown_key(limited.key), limit=limited.limit, retry=limited.retry_seconds
        )

    def _notes(self, session: Session) -> _Notes:
        n = session.notes.get(self.name)
        if not isinstance(n, _Notes):
            n = session.notes[self.name] = _Notes()
        return n

    def _cancel_pending(self, n: _Notes) -> None:
        if n.reserved is not None and n.sender is not None:
            self.limiter.cancel(n.sender, n.reserved)
        n.reserved = None

    # --- connection -----------------------------------------------------------------------

    def on_connect(self, session: Session) -> Verdict | None:
        if session.listener == "internal":
            return None  # the access service's own connection; its clients are limited by login
        member = session.member if session.listener == "mx" else None
        refused = self.limiter.connection_opened(session.client_ip, member, entry_of(session))
        if refused:
            return self._verdict(refused)
        self._notes(session).counted_connection = True
        return None

    def on_disconnect(self, session: Session) -> None:
        n = session.notes.get(self.name)
        if not isinstance(n, _Notes):
            return
        self._cancel_pending(n)
        if n.counted_connection:
            member = session.member if session.listener == "mx" else None
            self.limiter.connection_closed(session.client_ip, member)
            n.counted_connection = False

    # --- authentication -------------------------------------------------------------------

    def on_auth_check(self, session: Session, login: str | None = None) -> Verdict | None:
        refused = self.limiter.auth_check(session.client_ip, entry_of(session), login=login or None)
        return self._verdict(refused) if refused else None

    def on_auth(self, session: Session, login: str, ok: bool) -> Verdict | None:
        if ok:
            if login:
                self.limiter.auth_success(session.client_ip, login)
            return None
        refused = self.limiter.auth_failure(session.client_ip, entry_of(session), login=login or None)
        return self._verdict(refused) if refused else None

    # --- transaction ----------------------------------------------------------------------

    def _sender(self, session: Session) -> SenderLimits | None:
        if session.listener == "mx":
            return self.limiter.member(session.member) if session.member is not None else None
        if session.account is not None:
            return self.limiter.customer(session.account)
        return None

    def on_mail(self, session: Session, sender: str) -> Verdict | None:
        n = self._notes(session)
        self._cancel_pending(n)  # the previous transaction's reservation was never accepted
        n.sender = self._sender(session)
        if n.sender is None:
            return None
        refused = self.limiter.check_message(n.sender, entry_of(session))
        return self._verdict(refused) if refused else None

    def on_rcpt(self, session: Session, recipient: str) -> Verdict | None:
        n = self._notes(session)
        if n.sender is None:
            return None
        refused = self.limiter.check_recipient(n.sender, len(session.recipients) + 1, entry_of(session))
        if refused:
            n.rcpt_limited += 1
            return self._verdict(refused)
        return None

    def on_data(self, session: Session, message: Message) -> Verdict | None:
        n = self._notes(session)
        self._cancel_pending(n)
        if n.sender is None:
            return None
        count = len(session.recipients)
        refused = self.limiter.reserve(n.sender, count, entry_of(session))
        if refused:
            return self._verdict(refused)
        n.reserved = count
        return None

    def on_accepted(self, session: Session, envelope: Envelope) -> None:
        n = self._notes(session)
        if n.sender is not None and n.reserved is not None:
            self.limiter.commit(n.sender)
        n.reserved = None
