"""Envelope addresses: refuse CR/LF/NUL, `%`, `!`, source routes and quoted local parts (appliance.addresses)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.addresses import AddressError, normalize_address
from appliance.policy.check import Check
from appliance.policy.verdicts import BAD_RECIPIENT_SYNTAX, BAD_SENDER_SYNTAX, NULL_SENDER_REFUSED, Verdict

if TYPE_CHECKING:
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Session


class AddressSyntax(Check):
    name = "address_syntax"

    def __init__(self, ctx: PolicyContext) -> None:
        pass

    def on_mail(self, session: Session, sender: str) -> Verdict | None:
        if sender == "":
            # The null sender (RFC 5321 4.5.5) is for bounces between MTAs, not for customers.
            return None if session.listener == "mx" else NULL_SENDER_REFUSED.verdict(self.name)
        try:
            normalize_address(sender)
        except AddressError as exc:
            return BAD_SENDER_SYNTAX.verdict(self.name, reason=exc)
        return None

    def on_rcpt(self, session: Session, recipient: str) -> Verdict | None:
        try:
            normalize_address(recipient)
        except AddressError as exc:
            return BAD_RECIPIENT_SYNTAX.verdict(self.name, reason=exc)
        return None
