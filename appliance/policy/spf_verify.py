"""SPF (RFC 7208) of an outsider's MAIL FROM identity, evaluated by pyspf against relay.resolver.

The result alone refuses nothing: it is one input of DMARC (dmarc_verify decides, with
what RFC 7489 allows a receiver to do), and it is reported in Authentication-Results.
With the null reverse-path the HELO identity is checked instead (RFC 7208 2.4: the
"postmaster" of the HELO domain). pyspf enforces the RFC's limits itself (10 DNS-querying
terms, 2 void lookups: RFC 7208 4.6.4).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import spf

from appliance import metrics
from appliance.policy.inbound_dns import InboundCheck, noted, with_spf_resolver

if TYPE_CHECKING:
    from appliance.message import Message
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Session

log = logging.getLogger("appliance.policy.spf")

RESULTS = frozenset({"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"})


@dataclass(frozen=True)
class SpfResult:
    result: str  # one of RESULTS
    identity: str  # "mailfrom" or "helo"
    mailfrom: str  # the address checked (postmaster@HELO for the null sender)
    helo: str
    reason: str


def spf_of(session: Session) -> SpfResult | None:
    return noted(session, SpfVerify.name, SpfResult)


class SpfVerify(InboundCheck):
    name = "spf_verify"

    def __init__(self, ctx: PolicyContext) -> None:
        super().__init__(ctx)
        self.receiver = ctx.cfg.box.hostname

    def verify(self, session: Session, message: Message) -> SpfResult:
        sender = session.sender or ""
        helo = session.helo or ""
        try:
            with with_spf_resolver(self.dns):
                q = spf.query(i=session.client_ip, s=sender, h=helo, receiver=self.receiver,
                              timeout=self.dns.timeout)
                result, _code, reason = q.check()
        except spf.TempError as exc:
            result, reason = "temperror", str(exc)
        except (spf.PermError, ValueError, IndexError) as exc:
            # An identity pyspf cannot even parse (odd HELO or address): no verdict is possible.
            result, reason = "permerror", f"{exc.__class__.__name__}: {exc}"
        result = result if result in RESULTS else "permerror"
        identity = "mailfrom" if sender else "helo"
        checked = sender or f"postmaster@{helo}"
        metrics.INBOUND_AUTH.labels("spf", result).inc()
        log.info("spf ip=%s %s=%s: %s (%s)", session.client_ip, identity, checked, result, reason)
        return SpfResult(result, identity, checked, helo, str(reason))
