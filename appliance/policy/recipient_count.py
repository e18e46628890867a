"""At most relay.max_recipients per message; the rest get 452 4.5.3 (RFC 5321 4.5.3.1.8) and come in a later transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.policy.check import Check
from appliance.policy.verdicts import TOO_MANY_RECIPIENTS, Verdict

if TYPE_CHECKING:
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Session


class RecipientCount(Check):
    name = "recipient_count"

    def __init__(self, ctx: PolicyContext) -> None:
        self.limit = ctx.cfg.relay.max_recipients

    def on_rcpt(self, session: Session, recipient: str) -> Verdict | None:
        if len(session.recipients) >= self.limit:
            return TOO_MANY_RECIPIENTS.verdict(self.name, limit=self.limit)
        return None
