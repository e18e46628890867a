"""Ports 587/465 and the internal socket: MAIL only after TLS and AUTH (or XUSER); account usable."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.policy.check import Check
from appliance.policy.verdicts import (
    ACCOUNT_DISABLED,
    ACCOUNT_HELD,
    AUTH_REQUIRED,
    STARTTLS_FIRST,
    XUSER_REQUIRED,
    Verdict,
)

if TYPE_CHECKING:
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Session


class SubmissionAuth(Check):
    name = "submission_auth"

    def __init__(self, ctx: PolicyContext) -> None:
        pass

    def on_mail(self, session: Session, sender: str) -> Verdict | None:
        if session.listener == "mx":
            return None
        if session.listener == "internal":
            if session.login is None:
                return XUSER_REQUIRED.verdict(self.name)
        else:
            if not session.tls:
                return STARTTLS_FIRST.verdict(self.name)
            if session.login is None:
                return AUTH_REQUIRED.verdict(self.name)
        # Re-read for every message by the caller, off the event loop (Session.account).
        account = session.account
        if account is None or account.disabled:
            return ACCOUNT_DISABLED.verdict(self.name)
        if account.held:
            return ACCOUNT_HELD.verdict(self.name)
        return None
