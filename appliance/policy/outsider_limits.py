"""Message rate of outsiders: per client address and per /24 (IPv6 /48), in the one limiter.

GCRA allowances (``limits.outsider_*``, appliance/ratelimit/limiter.py ``outsider_message``):
MAIL is refused with ``450 4.7.1 ... retry in N s`` (never a 5xx) while either allowance is
used up; a message that passed every check takes one unit from both at the end of DATA.
Connections of outsiders are limited like any non-member's (per address, ``limits.connection_*``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.policy.check import Check
from appliance.policy.verdicts import RATE_MESSAGES, Verdict
from appliance.ratelimit.runtime import for_config

if TYPE_CHECKING:
    from appliance.message import Message
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Session
    from appliance.ratelimit import Limited


class OutsiderLimits(Check):
    name = "outsider_limits"

    def __init__(self, ctx: PolicyContext) -> None:
        self.limiter = for_config(ctx.cfg).limiter

    def _verdict(self, limited: Limited) -> Verdict:
        key = limited.key.partition(":")[2]
        return RATE_MESSAGES.verdict(self.name, key=key, limit=limited.limit, retry=limited.retry_seconds)

    def on_mail(self, session: Session, sender: str) -> Verdict | None:
        if not session.outsider:
            return None
        refused = self.limiter.outsider_message(session.client_ip, "mx")
        return self._verdict(refused) if refused else None

    def on_data(self, session: Session, message: Message) -> Verdict | None:
        if not session.outsider:
            return None
        refused = self.limiter.outsider_message(session.client_ip, "mx", take=True)
        return self._verdict(refused) if refused else None
