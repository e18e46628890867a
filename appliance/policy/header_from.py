"""Customers may use as From: (and Sender:) only addresses their account owns (JMAP's forbiddenFrom)."""

from __future__ import annotations

from email.utils import getaddresses
from typing import TYPE_CHECKING

from appliance.policy.check import Check
from appliance.policy.verdicts import FROM_MISSING, FROM_NOT_OWNED, Verdict

if TYPE_CHECKING:
    from appliance.message import Message
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Session


class HeaderFrom(Check):
    name = "header_from"

    def __init__(self, ctx: PolicyContext) -> None:
        pass

    def on_data(self, session: Session, message: Message) -> Verdict | None:
        if session.listener == "mx":
            return None
        froms = message.header_values("From")
        if not froms:
            return FROM_MISSING.verdict(self.name)
        for _name, address in getaddresses(froms + message.header_values("Sender")):
            if not address or session.account is None or not session.account.may_send_as(address):
                return FROM_NOT_OWNED.verdict(self.name, address=address or "(empty)")
        return None
