"""Local recipients whose mailbox is full get ``452 4.2.2`` at RCPT (RFC 3463; RFC 5321 §4.5.3.1.10).

Temporary on purpose: the sender's MTA keeps the message and retries, so a user
who makes room receives it; nothing is lost and nothing is bounced by us at
this point. Messages already queued are held back the same way by local
delivery (appliance/delivery/local.py) until the queue lifetime ends in a DSN.

Usage is read from the account's index (appliance.mailstore.quota.usage): one
small SQLite query and a listing of ``new/``. A full mailbox is remembered for
a few seconds, so a flood of RCPTs to it does not cost a query each (the hook
runs in the event loop and must stay quick); a mailbox with room is not, so the
first message that fills it is seen by the next RCPT.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from appliance.addresses import domain_of, normalize_address
from appliance.mailstore import maildir_path
from appliance.mailstore import quota as mquota
from appliance.policy.check import Check
from appliance.policy.verdicts import MAILBOX_FULL, Verdict

if TYPE_CHECKING:
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Session

CACHE_SECONDS = 2.0
CACHE_ENTRIES = 4096


class MailboxQuota(Check):
    name = "quota"

    def __init__(self, ctx: PolicyContext) -> None:
        self.local = frozenset(ctx.cfg.box.domains)
        self.mail_dir = ctx.cfg.paths.mail_dir
        self.classes = ctx.cfg.limits.classes
        self.accounts = ctx.accounts
        self._full: dict[str, tuple[float, str]] = {}  # owner -> (when, why): full mailboxes, briefly

    def _refusal(self, owner: str, limits: mquota.QuotaLimits) -> str | None:
        now = time.monotonic()
        hit = self._full.get(owner)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        # Full means "not even one more small message": the size is unknown at RCPT.
        err = mquota.quota_error(mquota.usage(maildir_path(self.mail_dir, owner)), limits, 1, 1)
        if err is None:
            self._full.pop(owner, None)
            return None
        if len(self._full) >= CACHE_ENTRIES:
            self._full.clear()
        self._full[owner] = (now, err.text)
        return err.text

    def on_rcpt(self, session: Session, recipient: str) -> Verdict | None:
        address = normalize_address(recipient)  # syntax was checked before this runs
        if domain_of(address) not in self.local:
            return None
        owner = self.accounts.owner_of(address)
        account = self.accounts.get(owner) if owner else None
        if account is None:
            return None
        limits = mquota.limits_for(account, self.classes)
        if limits.unlimited:
            return None
        why = self._refusal(owner, limits)
        if why is None:
            return None
        return MAILBOX_FULL.verdict(self.name, recipient=address, reason=why)
