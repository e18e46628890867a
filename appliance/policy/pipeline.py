"""The ordered list of policy checks and the code that runs them.

To add a check: write one module in this package with one ``Check`` subclass,
add its class (or any ``factory(ctx) -> Check``) to ``CHECKS`` below at the
place it belongs, and test it. Each factory receives the ``PolicyContext``
(config, account store). Checks run in list order and the first verdict wins;
``on_accepted`` and ``on_disconnect`` run for every check.

Order matters: who-may-connect checks come first, then address syntax, then
ownership and routing, so that a limiter placed after them counts only
attempts that would otherwise have been accepted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance import metrics
from appliance.policy import (
    abuse,
    address_syntax,
    arc_verify,
    auth_results,
    client_cert,
    dkim_verify,
    dmarc_verify,
    dnsbl,
    header_from,
    internal_peer,
    limits,
    member_access,
    outsider_limits,
    outsider_scope,
    quota,
    recipient_count,
    recipient_domain,
    sender_identity,
    spf_verify,
    submission_auth,
)
from appliance.policy.check import Check
from appliance.policy.verdicts import INTERNAL_ERROR, Verdict
from appliance.ratelimit.decisions import StateUnavailable

if TYPE_CHECKING:
    from appliance.accounts import AccountStore
    from appliance.config import Config
    from appliance.delivery.usage import UsageCache
    from appliance.message import Message
    from appliance.policy.session import Envelope, Session

log = logging.getLogger("appliance.policy")


@dataclass(frozen=True)
class PolicyContext:
    cfg: Config
    accounts: AccountStore
    usage: UsageCache | None = None  # the relay's mailbox usage, shared with local delivery (quota)


CheckFactory = Callable[[PolicyContext], Check]

CHECKS: list[CheckFactory] = [
    # connection: who may talk to us at all
    internal_peer.InternalPeer,
    member_access.MemberAccess,
    # MAIL: TLS/AUTH state, pinned client certificates, then the address itself
    submission_auth.SubmissionAuth,
    client_cert.ClientCertPins,
    address_syntax.AddressSyntax,
    sender_identity.SenderIdentity,
    # MAIL from outsiders (relay.outsiders = "verify", docs/internet.md): block lists
    dnsbl.Dnsbl,
    # RCPT: how many, then where to (the abuse brake's feed goes first to see every RCPT's outcome)
    abuse.AbuseBrakeFeed,
    recipient_count.RecipientCount,
    outsider_scope.OutsiderScope,
    recipient_domain.RecipientDomain,
    quota.MailboxQuota,
    # DATA: header identities
    header_from.HeaderFrom,
    # DATA from outsiders: SPF, DKIM and ARC results, then DMARC decides (550, Junk, 451); the
    # outsiders' rate (checked at MAIL) is taken only for a message DMARC let through;
    # Authentication-Results last
    spf_verify.SpfVerify,
    dkim_verify.DkimVerify,
    arc_verify.ArcVerify,
    dmarc_verify.DmarcVerify,
    outsider_limits.OutsiderLimits,
    auth_results.AuthResults,
    # rate limits (appliance/ratelimit), after the access checks
    limits.Limits,
]


def build(ctx: PolicyContext, factories: Sequence[CheckFactory] | None = None) -> Pipeline:
    chosen = list(factories) if factories is not None else CHECKS
    return Pipeline([f(ctx) for f in chosen])


class Pipeline:
    def __init__(self, checks: Sequence[Check]) -> None:
        self.checks = tuple(checks)

    def _run(self, stage: str, session: Session, call: Callable[[Check], Verdict | None]) -> Verdict | None:
        for check in self.checks:
            try:
                verdict = call(check)
            except StateUnavailable as exc:
                # The fleet's shared limiter is unreachable (docs/fleet.md): temporary, counted and logged
                # by the limiter (relay_shared_state_up), so no traceback per command.
                log.info("check %s in %s: %s", check.name, stage, exc)
                verdict = INTERNAL_ERROR.verdict(check.name)
            except Exception:
                # A broken check must never turn into an accept or a 5xx.
                log.exception("check %s failed in %s", check.name, stage)
                metrics.INTERNAL_ERRORS.labels(f"check:{check.name}").inc()
                verdict = INTERNAL_ERROR.verdict(check.name)
            if verdict is not None:
                metrics.VERDICTS.labels(session.listener, stage, verdict.origin, str(verdict.code)).inc()
                log.info(
                    "%s %s ip=%s login=%s member=%s: %s (%s)",
                    session.listener, stage, session.client_ip, session.login, session.member_id,
                    verdict.reply(), verdict.origin,
                )
                return verdict
        return None

    async def prepare_mail(self, session: Session, sender: str) -> None:
        """Before ``mail``: the checks' network lookups, in a worker thread (outsiders only, see Check)."""
        await self._prepare("mail", session, lambda c: c.prepare_mail(session, sender))

    async def prepare_data(self, session: Session, message: Message) -> None:
        """Before ``data``: the checks' network lookups, in a worker thread (outsiders only, see Check)."""
        await self._prepare("data", session, lambda c: c.prepare_data(session, message))

    async def prepare_rcpt(self, session: Session, recipient: str) -> None:
        """Before ``rcpt``: the checks' reads of a local recipient's mailbox, in a worker thread (see Check)."""
        if session.recipient_account is not None:
            await self._in_thread("rcpt", lambda c: c.prepare_rcpt(session, recipient))

    async def _prepare(self, stage: str, session: Session, call: Callable[[Check], None]) -> None:
        if session.outsider:
            await self._in_thread(stage, call)

    async def _in_thread(self, stage: str, call: Callable[[Check], None]) -> None:
        def run_all() -> None:
            for check in self.checks:
                try:
                    call(check)
                except Exception:
                    # Its on_* hook finds no result and answers a temporary failure, never an accept.
                    log.exception("check %s failed preparing %s", check.name, stage)
                    metrics.INTERNAL_ERRORS.labels(f"check:{check.name}").inc()

        await asyncio.to_thread(run_all)

    def connect(self, session: Session) -> Verdict | None:
        return self._run("connect", session, lambda c: c.on_connect(session))

    def auth_check(self, session: Session, login: str | None = None) -> Verdict | None:
        return self._run("auth_check", session, lambda c: c.on_auth_check(session, login))

    def auth(self, session: Session, login: str, ok: bool) -> Verdict | None:
        return self._run("auth", session, lambda c: c.on_auth(session, login, ok))

    def mail(self, session: Session, sender: str) -> Verdict | None:
        return self._run("mail", session, lambda c: c.on_mail(session, sender))

    def rcpt(self, session: Session, recipient: str) -> Verdict | None:
        return self._run("rcpt", session, lambda c: c.on_rcpt(session, recipient))

    def data(self, session: Session, message: Message) -> Verdict | None:
        return self._run("data", session, lambda c: c.on_data(session, message))

    def accepted(self, session: Session, envelope: Envelope) -> None:
        for check in self.checks:
            try:
                check.on_accepted(session, envelope)
            except Exception:
                log.exception("check %s failed in on_accepted", check.name)
                metrics.INTERNAL_ERRORS.labels(f"check:{check.name}").inc()

    def disconnect(self, session: Session) -> None:
        for check in self.checks:
            try:
                check.on_disconnect(session)
            except Exception:
                log.exception("check %s failed in on_disconnect", check.name)
