"""Feeds the abuse brake (appliance/ratelimit/brake.py) with what a customer's sending looks like.

- Every accepted message: its recipients (the brake counts first-time ones).
- Every recipient refused at RCPT by an address check (relay denied, no such
  mailbox, bad syntax): a refusal. Temporary refusals (rate limits, too many
  recipients in one message) are not evidence and are not counted.

The pipeline stops at the first verdict, so a check placed after the address
checks never sees the recipients they refuse. This check therefore sits
*before* them and learns each RCPT's outcome afterwards: the relay appends an
accepted recipient to ``session.recipients``, so a RCPT that did not grow the
list was refused. The outcome is settled at the next RCPT, at DATA, at the next
MAIL or when the connection ends.

Holding happens in the brake; the hold itself is enforced by
``submission_auth`` (it re-reads the account at every MAIL: ``450 4.7.1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.policy.check import Check
from appliance.ratelimit.runtime import for_config

if TYPE_CHECKING:
    from appliance.message import Message
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Envelope, Session
    from appliance.policy.verdicts import Verdict


@dataclass
class _Pending:
    before: int  # len(session.recipients) when the RCPT was given
    limited: int  # the limits check's refusal count at that time


class AbuseBrakeFeed(Check):
    name = "abuse_brake"

    def __init__(self, ctx: PolicyContext) -> None:
        self.brake = for_config(ctx.cfg).brake
        self.max_recipients = ctx.cfg.relay.max_recipients

    @staticmethod
    def _customer(session: Session) -> str | None:
        if session.listener == "mx" or session.account is None:
            return None
        return session.account.address

    @staticmethod
    def _limited(session: Session) -> int:
        n = session.notes.get("limits")
        return int(getattr(n, "rcpt_limited", 0))

    def _settle(self, session: Session, at_new_mail: bool = False) -> None:
        pending = session.notes.pop(self.name, None)
        account = self._customer(session)
        if not isinstance(pending, _Pending) or account is None:
            return
        now = len(session.recipients)
        if now > pending.before:
            return  # accepted
        if at_new_mail and pending.before == 0:
            return  # the transaction may have been reset since: cannot tell, so do not count
        if self._limited(session) > pending.limited:
            return  # refused by a rate limit: temporary, not evidence
        self.brake.record_rejected(account)

    def on_mail(self, session: Session, sender: str) -> Verdict | None:
        self._settle(session, at_new_mail=True)
        return None

    def on_rcpt(self, session: Session, recipient: str) -> Verdict | None:
        self._settle(session)
        if self._customer(session) is None or len(session.recipients) >= self.max_recipients:
            return None  # 452 4.5.3 follows: the client sends the rest later, nothing to judge
        session.notes[self.name] = _Pending(len(session.recipients), self._limited(session))
        return None

    def on_data(self, session: Session, message: Message) -> Verdict | None:
        self._settle(session)
        return None

    def on_accepted(self, session: Session, envelope: Envelope) -> None:
        account = self._customer(session)
        if account is not None:
            self.brake.record_accepted(account, list(envelope.recipients))

    def on_disconnect(self, session: Session) -> None:
        self._settle(session)
