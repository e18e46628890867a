"""Customers may use as envelope sender only addresses their account owns (JMAP's forbiddenMailFrom);
on port 25 nobody may use this box's own domains."""

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
        self.local_domains = frozenset(d.lower() for d in ctx.cfg.box.domains)
        # Boxes of this fleet relaying local mail to its home box (docs/fleet.md "Home boxes"), known by
        # their client certificate: the sender was checked on the box its customer submitted to.
        self.fleet_pins = ctx.cfg.fleet.box_pins()

    def on_mail(self, session: Session, sender: str) -> Verdict | None:
        if session.listener == "mx":
            # Port 25 never carries mail from this box's own domains: its customers submit on
            # 587/465, and no other relay may claim them (the code of practice's forged-sender
            # control, docs/practice.md). The null sender (bounces) has no domain.
            domain = sender.rpartition("@")[2].lower() if "@" in sender else ""
            if domain in self.local_domains and session.client_spki not in self.fleet_pins:
                return SENDER_NOT_OWNED.verdict(self.name, sender=sender)
            return None
        if session.account is None or not session.account.may_send_as(sender):
            return SENDER_NOT_OWNED.verdict(self.name, sender=sender)
        return None
