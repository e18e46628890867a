"""Where a recipient may be: no relaying for unauthenticated clients; local mailboxes must exist.

Port 25 accepts only local domains and relay.relay_domains (`550 5.7.1`
otherwise). Authenticated customers may address any domain; routing decides
later whether it can be delivered. Local recipients must be an account or an
alias; postmaster is always accepted (RFC 5321 4.5.1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.addresses import domain_of, normalize_address
from appliance.policy.check import Check
from appliance.policy.verdicts import NO_SUCH_USER, RELAY_DENIED, Verdict

if TYPE_CHECKING:
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Session


class RecipientDomain(Check):
    name = "recipient_domain"

    def __init__(self, ctx: PolicyContext) -> None:
        self.local = frozenset(ctx.cfg.box.domains)
        self.relay = frozenset(d.lower() for d in ctx.cfg.relay.relay_domains)

    def on_rcpt(self, session: Session, recipient: str) -> Verdict | None:
        address = normalize_address(recipient)  # syntax was checked before this runs
        domain = domain_of(address)
        if domain in self.local:
            # recipient_owner: looked up by the caller for this RCPT, off the event loop.
            if address.split("@", 1)[0] == "postmaster" or session.recipient_owner is not None:
                return None
            return NO_SUCH_USER.verdict(self.name, recipient=address)
        if domain in self.relay:
            return None
        if session.listener != "mx" and session.authenticated:
            return None
        return RELAY_DENIED.verdict(self.name, domain=domain)
