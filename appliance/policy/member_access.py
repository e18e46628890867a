"""Port 25: only relays of active consortium members may connect (DESIGN.md "Who may send what")."""

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
        pass

    def on_connect(self, session: Session) -> Verdict | None:
        if session.listener != "mx":
            return None
        if session.registry is None:
            # Never fail open; a temporary refusal loses nothing.
            return REGISTRY_MISSING.verdict(self.name)
        member = session.registry.member_for_address(session.client_ip)
        if member is None:
            return NOT_A_MEMBER.verdict(self.name, ip=session.client_ip)
        if not member.active:
            return MEMBER_SUSPENDED.verdict(self.name, member=member.id)
        if session.registry_expired:
            return REGISTRY_EXPIRED.verdict(self.name)
        session.member = member
        return None
