"""Local recipients whose mailbox is full get ``452 4.2.2`` at RCPT (RFC 3463; RFC 5321 §4.5.3.1.10).

Temporary on purpose: the sender's MTA keeps the message and retries, so a user
who makes room receives it; nothing is lost and nothing is bounced by us at
this point (a limit is never a 5xx). Messages already queued are held back the
same way by local delivery (appliance/delivery/local.py) until the queue
lifetime ends in a DSN.

Usage comes from the relay's one ``UsageCache`` (appliance/delivery/usage.py),
shared with local delivery: it is read in a worker thread before the RCPT hooks
(``prepare_rcpt``; two stat() calls when cached, the account's index and a
listing of ``new/`` at most once per ``usage.MAX_AGE`` seconds or after a
session changed the index), and local delivery adds each message it delivers, so
the message that fills a mailbox is seen by the next RCPT. The hook in the event
loop only compares two numbers. Staleness: a mailbox emptied by a session (IMAP
EXPUNGE, POP DELE) is seen at once (its index changed); files removed by hand
within MAX_AGE seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.addresses import AddressError, domain_of, normalize_address
from appliance.delivery.usage import UsageCache
from appliance.mailstore import maildir_path
from appliance.mailstore import quota as mquota
from appliance.policy.check import Check
from appliance.policy.verdicts import INTERNAL_ERROR, MAILBOX_FULL, Verdict

if TYPE_CHECKING:
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Session


class MailboxQuota(Check):
    name = "quota"

    def __init__(self, ctx: PolicyContext) -> None:
        self.local = frozenset(ctx.cfg.box.domains)
        self.mail_dir = ctx.cfg.paths.mail_dir
        self.classes = ctx.cfg.limits.classes
        self.usage = ctx.usage if ctx.usage is not None else UsageCache()

    def _limited(self, session: Session, recipient: str) -> tuple[str, mquota.QuotaLimits] | None:
        """(owner, limits) when RECIPIENT is a local account with a quota, else None."""
        try:
            address = normalize_address(recipient)
        except AddressError:
            return None  # address_syntax refuses it
        # Looked up off the event loop by the protocol layer (Session), never here.
        account = session.recipient_account
        if domain_of(address) not in self.local or account is None:
            return None
        limits = mquota.limits_for(account, self.classes)
        return None if limits.unlimited else (account.address, limits)

    def prepare_rcpt(self, session: Session, recipient: str) -> None:
        # In a worker thread (Pipeline.prepare_rcpt): the only place this check touches the disk.
        session.notes.pop(self.name, None)
        limited = self._limited(session, recipient)
        if limited is not None:
            owner = limited[0]
            session.notes[self.name] = (owner, self.usage.usage(maildir_path(self.mail_dir, owner)))

    def on_rcpt(self, session: Session, recipient: str) -> Verdict | None:
        limited = self._limited(session, recipient)
        noted = session.notes.pop(self.name, None)
        if limited is None:
            return None
        owner, limits = limited
        if not (isinstance(noted, tuple) and noted[0] == owner):
            # The usage could not be read (prepare_rcpt failed, and logged it): temporary, never an accept.
            return INTERNAL_ERROR.verdict(self.name)
        # Full means "not even one more small message": the size is unknown at RCPT.
        err = mquota.quota_error(noted[1], limits, 1, 1)
        if err is None:
            return None
        return MAILBOX_FULL.verdict(self.name, recipient=normalize_address(recipient), reason=err.text)
