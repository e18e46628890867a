"""Outsiders (relay.outsiders = "verify") may send only to this box's own domains: never a relay.

Relay domains (``relay.relay_domains``) are for the consortium's sponsored boxes and
members' own traffic; an outside sender reaching them through us would make this box
an open relay for whatever they host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.addresses import domain_of, normalize_address
from appliance.policy.check import Check
from appliance.policy.verdicts import RELAY_DENIED, Verdict

if TYPE_CHECKING:
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Session


class OutsiderScope(Check):
    name = "outsider_scope"

    def __init__(self, ctx: PolicyContext) -> None:
        self.local = frozenset(ctx.cfg.box.domains)

    def on_rcpt(self, session: Session, recipient: str) -> Verdict | None:
        if not session.outsider:
            return None
        domain = domain_of(normalize_address(recipient))  # syntax was checked before this runs
        if domain not in self.local:
            return RELAY_DENIED.verdict(self.name, domain=domain)
        return None
