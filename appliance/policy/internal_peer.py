"""Internal submission socket: only the access service's uid may connect (SO_PEERCRED)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from appliance.policy.check import Check
from appliance.policy.verdicts import INTERNAL_PEER_REFUSED, Verdict

if TYPE_CHECKING:
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Session


class InternalPeer(Check):
    name = "internal_peer"

    def __init__(self, ctx: PolicyContext) -> None:
        self.allowed = frozenset(ctx.cfg.relay.internal_allowed_uids or [os.getuid()])

    def on_connect(self, session: Session) -> Verdict | None:
        if session.listener != "internal":
            return None
        if session.peer_uid is None or session.peer_uid not in self.allowed:
            return INTERNAL_PEER_REFUSED.verdict(self.name, uid=session.peer_uid)
        return None
