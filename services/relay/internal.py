"""The internal submission socket (access service -> relay), docs/ARCHITECTURE.md.

Same ESMTP as the public listeners plus three verbs, on a unix socket whose
peer uid (SO_PEERCRED) must be allowed (policy/internal_peer.py):

- ``XUSER login client-address protocol``: the access service asserts the
  logged-in user once per session; mail then goes through the same policy,
  limits, DKIM and spool as a port-587 submission by that account.
- ``XAUTHCHECK client-address [protocol] [LOGIN=xtext]`` before verifying a
  password, ``XAUTHFAIL ...`` after a wrong one and ``XAUTHOK ... LOGIN=xtext``
  after a right one: the limiter's AUTH accounting for IMAP/POP logins, shared
  with SMTP AUTH (per client address, and per account when LOGIN is given;
  XAUTHOK teaches the account's known addresses). LOGIN is xtext (RFC 3461 4),
  as in MAIL FROM's AUTH= parameter, so any login fits in one word. The web
  console's admin and customer logins use these three verbs too (protocol
  CONSOLE), so they are labelled as theirs in the limiter's log and metrics;
  XUSER knows no CONSOLE: the console never submits mail.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from appliance.policy.session import Session as PolicySession
from appliance.policy.verdicts import (
    XAUTH_SYNTAX,
    XAUTHCHECK_OK,
    XAUTHFAIL_OK,
    XAUTHOK_OK,
    XUSER_ALREADY,
    XUSER_OK,
    XUSER_SYNTAX,
    XUSER_UNKNOWN,
)
from appliance.submitclient import xtext_decode
from services.relay.smtp import RelaySMTP

if TYPE_CHECKING:
    from services.relay.app import RelayApp

PROTOCOLS = {"IMAP": "imap", "POP": "pop", "POP3": "pop", "SMTP": "smtp"}  # XUSER: who may submit
AUTH_PROTOCOLS = {**PROTOCOLS, "CONSOLE": "console"}  # XAUTHCHECK/XAUTHFAIL/XAUTHOK: who may log in


def _ip(text: str) -> str | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return str(ip)


class InternalSMTP(RelaySMTP):
    def __init__(self, app: RelayApp) -> None:
        super().__init__(app, "internal", starttls=False, implicit_tls=False)

    async def smtp_XUSER(self, arg: str | None) -> None:
        ps = self.psession
        assert ps is not None
        if ps.login is not None:
            await self.reply(XUSER_ALREADY.verdict())
            return
        parts = (arg or "").split()
        ip = _ip(parts[1]) if len(parts) == 3 else None
        proto = PROTOCOLS.get(parts[2].upper()) if len(parts) == 3 else None
        if ip is None or proto is None:
            await self.reply(XUSER_SYNTAX.verdict())
            return
        # Off the event loop: a database call may wait for SQLite's lock (appliance/accounts.py).
        account = await self.app.read_accounts(self.app.accounts.get, parts[0])
        if account is None or account.disabled:
            await self.reply(XUSER_UNKNOWN.verdict("xuser"))
            return
        ps.login = account.address
        ps.account = account
        ps.client_ip = ip
        ps.protocol = proto  # type: ignore[assignment]
        await self.reply(XUSER_OK.verdict(login=account.address))

    @staticmethod
    def _probe(arg: str | None) -> tuple[PolicySession, str | None] | None:
        """A session standing for the IMAP/POP/console client at the given address, and the login if given."""
        parts = (arg or "").split()
        login: str | None = None
        if parts and parts[-1].upper().startswith("LOGIN="):
            login = xtext_decode(parts.pop()[6:])
            if login is None:
                return None
        ip = _ip(parts[0]) if parts and len(parts) <= 2 else None
        if ip is None:
            return None
        proto = AUTH_PROTOCOLS.get(parts[1].upper(), "imap") if len(parts) == 2 else "imap"
        return PolicySession(listener="internal", client_ip=ip, protocol=proto), login  # type: ignore[arg-type]

    async def smtp_XAUTHCHECK(self, arg: str | None) -> None:
        probe = self._probe(arg)
        if probe is None:
            await self.reply(XAUTH_SYNTAX.verdict(verb="XAUTHCHECK"))
            return
        verdict = self.app.pipeline.auth_check(*probe)
        await self.push(verdict.reply() if verdict else XAUTHCHECK_OK.reply())

    async def smtp_XAUTHFAIL(self, arg: str | None) -> None:
        probe = self._probe(arg)
        if probe is None:
            await self.reply(XAUTH_SYNTAX.verdict(verb="XAUTHFAIL"))
            return
        session, login = probe
        verdict = self.app.pipeline.auth(session, login or "", False)
        await self.push(verdict.reply() if verdict else XAUTHFAIL_OK.reply())

    async def smtp_XAUTHOK(self, arg: str | None) -> None:
        probe = self._probe(arg)
        if probe is None or not probe[1]:
            await self.reply(XAUTH_SYNTAX.verdict(verb="XAUTHOK"))
            return
        session, login = probe
        verdict = self.app.pipeline.auth(session, login or "", True)
        await self.push(verdict.reply() if verdict else XAUTHOK_OK.reply())

