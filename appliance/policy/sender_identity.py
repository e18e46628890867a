"""Customers may use as envelope sender only addresses their account owns (JMAP's forbiddenMailFrom)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.policy.check import Check
from appliance.policy.verdicts import SENDER_NOT_OWNED, Verdict

if TYPE_CHECKING:
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Session


class SenderIdentity(Check):
    name = "sender_identity"

    def __init__(self, ctx: PolicyContext) -> None:
        pass

    def on_mail(self, session: Session, sender: str) -> Verdict | None:
        if session.listener == "mx":
            return None
        if session.account is None or not session.account.may_send_as(sender):
            return SENDER_NOT_OWNED.verdict(self.name, sender=sender)
        return None
