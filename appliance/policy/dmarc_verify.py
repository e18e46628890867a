"""DMARC (RFC 7489) for outsiders' mail (policy discovery by authheaders), and what the box does with it.

This check makes the decisions of ``relay.outsiders = "verify"`` (docs/internet.md):

- DMARC ``fail`` and the From domain's policy is ``reject``: ``550 5.7.1`` (RFC 7489 6.7,
  10.3: refusing during the session, so the sender is told and nothing is lost);
- ``fail`` and ``quarantine``: accepted and delivered into the recipient's Junk folder
  (marked with ``X-Appliance-Junk``, which appliance/delivery/local.py files there);
- ``fail`` and ``none``: delivered as usual (the domain only asked for reports);
- no DMARC policy, and SPF says ``fail`` (RFC 7208 8.4): delivered into Junk: the domain
  said this host may not send for it, and no DMARC policy says what to do instead;
- a valid ARC chain sealed by a trusted forwarder (``relay.verify.arc_trusted_sealers``,
  RFC 8617 7.2 local policy) overrides a DMARC ``fail``: the forwarder verified the original;
- a temporary DNS failure that leaves the answer open (the DMARC record, or SPF or a DKIM
  key while DMARC does not pass): ``451 4.4.3``, never accepted unverified and never
  refused for good (RFC 7208 8.6, RFC 7489 6.6.3);
- ``permerror`` (a broken DMARC record): treated as no policy (RFC 7489 6.6.3).

The ``pct`` tag is not sampled: a failing message always gets the published policy (the
stricter reading). A record's ``np`` (DMARCbis) is not used.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from email.utils import getaddresses
from typing import TYPE_CHECKING, Any

from appliance import metrics
from appliance.policy.arc_verify import arc_of
from appliance.policy.dkim_verify import DkimResult, dkim_of
from appliance.policy.inbound_dns import DnsTempError, InboundCheck, noted
from appliance.policy.spf_verify import SpfResult, spf_of
from appliance.policy.verdicts import DMARC_REJECT, DNS_TEMPFAIL, Verdict

if TYPE_CHECKING:
    from appliance.message import Message
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Session

log = logging.getLogger("appliance.policy.dmarc")

JUNK = "Junk"
# Set on a message to be delivered into the recipient's Junk folder (appliance/delivery/local.py
# reads it). The header block is the one part of a message still open when DMARC has decided
# (the spool envelope is written when DATA starts). Only this box adds it: auth_results removes
# one a client wrote, whatever the listener.
JUNK_HEADER = "X-Appliance-Junk"


@dataclass(frozen=True)
class DmarcResult:
    result: str  # pass, fail, none, permerror, temperror
    header_from: str  # the RFC5322.From domain evaluated
    policy: str  # reject, quarantine, none, or "" without a record
    reason: str = ""


def dmarc_of(session: Session) -> DmarcResult | None:
    return noted(session, DmarcVerify.name, DmarcResult)


@functools.cache
def _psl() -> Any:
    from publicsuffix2 import PublicSuffixList

    return PublicSuffixList()  # the list publicsuffix2 ships (parsed once)


@functools.lru_cache(maxsize=4096)
def org_domain(domain: str) -> str:
    """RFC 7489 3.2: the public suffix (PSL; no rule matching means the "*" rule) plus one label."""
    domain = domain.lower().rstrip(".")
    suffix = _psl().get_tld(domain, strict=False) or domain.rsplit(".", 1)[-1]
    if domain == suffix or not domain.endswith("." + suffix):
        return domain
    label = domain[: -len(suffix) - 1].rsplit(".", 1)[-1]
    return f"{label}.{suffix}"


def _from_domain(message: Message) -> str:
    addresses = [a for _n, a in getaddresses(message.header_values("From")) if "@" in a]
    return addresses[0].rsplit("@", 1)[1].lower().rstrip(".") if addresses else ""


class DmarcVerify(InboundCheck):
    name = "dmarc_verify"

    def __init__(self, ctx: PolicyContext) -> None:
        super().__init__(ctx)
        self.trusted_sealers = frozenset(ctx.cfg.relay.verify.arc_trusted_sealers)

    def verify(self, session: Session, message: Message) -> DmarcResult:
        from_domain = _from_domain(message)
        try:
            found = self._evaluate(from_domain, spf_of(session), dkim_of(session))
        except DnsTempError as exc:
            found = DmarcResult("temperror", from_domain, "", str(exc))
        metrics.INBOUND_AUTH.labels("dmarc", found.result).inc()
        log.info("dmarc ip=%s from=%s: %s policy=%s%s", session.client_ip, found.header_from or "-", found.result,
                 found.policy or "-", f" ({found.reason})" if found.reason else "")
        return found

    def _evaluate(self, from_domain: str, spf: SpfResult | None, dkims: list[DkimResult]) -> DmarcResult:
        """RFC 7489 6.6: policy discovery, then identifier alignment (3.1) of the passing results.

        authheaders fetches and parses the records (``lookup_receiver_record``). Two of its steps
        are not used: its alignment extracts domains with ``@([a-z0-9.]+)``, so for a hyphenated
        domain (``my-bank.example``) it would look up the policy of ``my`` and a forgery would pass;
        and its organizational domain (publicsuffix2, non-strict) is the bare TLD for a TLD the
        list does not know, so every ``*.internal`` domain would align with every other.
        ``org_domain`` applies RFC 7489 3.2 to publicsuffix2's public suffix instead.
        """
        from authheaders.dmarc_lookup import DMARCException, lookup_receiver_record

        if not from_domain:
            return DmarcResult("none", "", "", "no RFC5322.From domain")
        try:
            # 6.6.3 policy discovery: the From domain's record, else its organizational domain's.
            record = lookup_receiver_record(from_domain, self.dns.dmarc_txt)
            from_org = False
            org = org_domain(from_domain)
            if not record and org != from_domain:
                record, from_org = lookup_receiver_record(org, self.dns.dmarc_txt), True
        except DMARCException as exc:
            return DmarcResult("permerror", from_domain, "", str(exc)[:200])
        policy = (record or {}).get("p", "")
        if from_org:
            # The record is the organizational domain's: "sp" applies to its subdomains (6.3).
            policy = record.get("sp", policy)
        policy = policy.rstrip("\\").strip()
        if policy not in ("none", "quarantine", "reject"):
            # No record, or one without a valid p= (6.6.3 step 6: no policy to apply).
            return DmarcResult("none", from_domain, "", "no DMARC policy")

        def aligned(domain: str, mode: str) -> bool:
            domain = domain.lower().rstrip(".")
            if mode == "s":  # strict: the exact domain (3.1.1, 3.1.2)
                return domain == from_domain
            return bool(domain) and org_domain(domain) == org  # relaxed: the same organizational domain

        aspf, adkim = record.get("aspf", "r"), record.get("adkim", "r")
        if spf is not None and spf.result == "pass" and spf.identity == "mailfrom":
            # 3.1.2: SPF aligns through the MAIL FROM identity only.
            if aligned(spf.mailfrom.rpartition("@")[2], aspf):
                return DmarcResult("pass", from_domain, policy, "spf aligned")
        for d in dkims:
            if d.result == "pass" and aligned(d.domain, adkim):
                return DmarcResult("pass", from_domain, policy, f"dkim d={d.domain} aligned")
        return DmarcResult("fail", from_domain, policy, "no aligned SPF or DKIM pass")

    def on_data(self, session: Session, message: Message) -> Verdict | None:
        if not session.outsider:
            return None
        message.remove(JUNK_HEADER)  # only this box says where a message goes
        action, verdict, why = self._decide(session)
        metrics.INBOUND_AUTH.labels("action", action).inc()
        if action == "junk":
            message.prepend(JUNK_HEADER, f"yes ({why})")
        log.info("inbound ip=%s from=<%s>: %s (%s)", session.client_ip, session.sender, action, why)
        return verdict

    def _decide(self, session: Session) -> tuple[str, Verdict | None, str]:
        """(action, verdict, why): action is accept, junk, reject, defer or arc_override."""
        dmarc = dmarc_of(session)
        spf = spf_of(session)
        dkims = dkim_of(session)
        if dmarc is None or spf is None:
            # A lookup step failed unexpectedly (logged by the pipeline): never accept unverified.
            return "defer", DNS_TEMPFAIL.verdict(self.name, what="verification did not complete"), "no result"
        if dmarc.result == "temperror":
            what = f"DMARC record of {dmarc.header_from}"
            return "defer", DNS_TEMPFAIL.verdict(self.name, what=what), what
        if dmarc.result != "pass":
            if spf.result == "temperror":
                what = f"SPF of {spf.mailfrom}"
                return "defer", DNS_TEMPFAIL.verdict(self.name, what=what), what
            pending = [r for r in dkims if r.result == "temperror"]
            if pending:
                what = f"DKIM key of {pending[0].domain}"
                return "defer", DNS_TEMPFAIL.verdict(self.name, what=what), what
        if dmarc.result == "fail":
            arc = arc_of(session)
            if arc is not None and arc.result == "pass" and arc.sealer in self.trusted_sealers:
                return "arc_override", None, f"dmarc=fail, ARC sealed by trusted {arc.sealer}"
            if dmarc.policy == "reject":
                return "reject", DMARC_REJECT.verdict(self.name, domain=dmarc.header_from), "dmarc=fail p=reject"
            if dmarc.policy == "quarantine":
                return "junk", None, f"dmarc=fail p=quarantine of {dmarc.header_from}"
            return "accept", None, "dmarc=fail p=none"
        if dmarc.result in ("none", "permerror") and spf.result == "fail":
            return "junk", None, f"spf=fail for {spf.mailfrom} and no DMARC policy"
        return "accept", None, f"dmarc={dmarc.result}"
