"""Port 25: a member that lists SPKI pins must present a matching TLS client certificate before MAIL."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.policy.check import Check
from appliance.policy.verdicts import CLIENT_CERT_MISSING, CLIENT_CERT_WRONG, Verdict

if TYPE_CHECKING:
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Session


class ClientCertPins(Check):
    name = "client_cert"

    def __init__(self, ctx: PolicyContext) -> None:
        pass

    def on_mail(self, session: Session, sender: str) -> Verdict | None:
        if session.listener != "mx" or session.member is None:
            return None
        pins = session.member.pins()
        if not pins:
            return None
        if session.client_spki is None:
            return CLIENT_CERT_MISSING.verdict(self.name, member=session.member.id)
        if session.client_spki not in pins:
            return CLIENT_CERT_WRONG.verdict(self.name, member=session.member.id)
        return None
