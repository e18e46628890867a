"""Optional DNS block lists (``relay.verify.dnsbl_zones``) for outsiders: a listed client gets 554 5.7.1.

Asked once per connection, before its first MAIL (in a worker thread, Check.prepare_mail).
A block list that cannot be asked now (timeout, SERVFAIL) is logged and counted
(``relay_inbound_auth_total{check="dnsbl",result="temperror"}``) and does not block the
mail: the list is advice, SPF/DKIM/DMARC still run, and an unreachable list must not
stop all mail from outside (Postfix's reject_rbl_client behaves the same).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance import metrics
from appliance.policy.check import Check
from appliance.policy.inbound_dns import DnsTempError, for_config
from appliance.policy.verdicts import DNSBL_LISTED, Verdict

if TYPE_CHECKING:
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Session

log = logging.getLogger("appliance.policy.dnsbl")


@dataclass(frozen=True)
class DnsblResult:
    listed_by: str | None  # the first zone listing the client, or None


class Dnsbl(Check):
    name = "dnsbl"

    def __init__(self, ctx: PolicyContext) -> None:
        self.zones = tuple(ctx.cfg.relay.verify.dnsbl_zones)
        self.dns = for_config(ctx.cfg)

    def prepare_mail(self, session: Session, sender: str) -> None:
        if not self.zones or isinstance(session.notes.get(self.name), DnsblResult):
            return
        listed_by = None
        for zone in self.zones:
            try:
                if self.dns.dnsbl_listed(session.client_ip, zone):
                    listed_by = zone
                    break
            except DnsTempError as exc:
                log.warning("dnsbl %s not answering for ip=%s: %s", zone, session.client_ip, exc)
                metrics.INBOUND_AUTH.labels("dnsbl", "temperror").inc()
        result = "listed" if listed_by else "pass"
        metrics.INBOUND_AUTH.labels("dnsbl", result).inc()
        log.info("dnsbl ip=%s: %s%s", session.client_ip, result, f" by {listed_by}" if listed_by else "")
        session.notes[self.name] = DnsblResult(listed_by)

    def on_mail(self, session: Session, sender: str) -> Verdict | None:
        if not session.outsider or not self.zones:
            return None
        found = session.notes.get(self.name)
        if isinstance(found, DnsblResult) and found.listed_by:
            return DNSBL_LISTED.verdict(self.name, ip=session.client_ip, zone=found.listed_by)
        return None
