"""Port 25: relays of active consortium members may connect; others per relay.outsiders.

``refuse`` (DESIGN.md "Who may send what"): every other client gets ``554 5.7.1`` at the
greeting. ``verify`` (docs/internet.md): a client that is no member's relay is let in as an
*outsider*, and the outsider checks (outsider_scope, outsider_limits, dnsbl, spf_verify,
dkim_verify, arc_verify, dmarc_verify, auth_results) decide about its mail. A suspended
member's relay is refused in both modes, and without a current registry nobody can be told
apart from a member, so that stays a temporary refusal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.policy.check import Check
from appliance.policy.verdicts import (
    MEMBER_SUSPENDED,
    NOT_A_MEMBER,
    REGISTRY_EXPIRED,
    REGISTRY_MISSING,
    Verdict,
)

if TYPE_CHECKING:
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Session


class MemberAccess(Check):
    name = "member_access"

    def __init__(self, ctx: PolicyContext) -> None:
        self.verify = ctx.cfg.outsiders == "verify"
        # The boxes of this fleet connect from their internal addresses (fleet.boxes.*.relay, docs/fleet.md
        # "Home boxes"), which the registry need not list: they count as this box's own member.
        self.own_member = ctx.cfg.box.member_id
        self.fleet_hosts = frozenset(b.relay_hop()[0] for b in ctx.cfg.fleet.boxes.values())

    def on_connect(self, session: Session) -> Verdict | None:
        if session.listener != "mx":
            return None
        if session.registry is None:
            # Never fail open; a temporary refusal loses nothing.
            return REGISTRY_MISSING.verdict(self.name)
        member = session.registry.member_for_address(session.client_ip)
        if member is None and session.client_ip in self.fleet_hosts:
            member = session.registry.member(self.own_member)
        if member is None:
            if self.verify:
                # Verified like any sender; an expired registry cannot make that less safe.
                session.outsider = True
                return None
            return NOT_A_MEMBER.verdict(self.name, ip=session.client_ip)
        if not member.active:
            return MEMBER_SUSPENDED.verdict(self.name, member=member.id)
        if session.registry_expired:
            return REGISTRY_EXPIRED.verdict(self.name)
        session.member = member
        return None
