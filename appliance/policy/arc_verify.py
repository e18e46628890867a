"""ARC (RFC 8617) chain of an outsider's message, validated by dkimpy against relay.resolver.

The chain validation status (``arc=pass|fail|none``) goes into Authentication-Results.
It changes a decision only through local policy (RFC 8617 7.2): when DMARC fails and the
newest ARC set is a valid chain sealed by a domain in ``relay.verify.arc_trusted_sealers``
(a forwarder or list the operator trusts to have verified the original), dmarc_verify
does not apply the sender's p=reject / p=quarantine. A seal anyone can make proves only
who forwarded, so an untrusted sealer changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dkim

from appliance import metrics
from appliance.policy.inbound_dns import DnsTempError, InboundCheck, noted, quiet_dkimpy_log

if TYPE_CHECKING:
    from appliance.message import Message
    from appliance.policy.session import Session

log = logging.getLogger("appliance.policy.arc")
_dkimpy_log = quiet_dkimpy_log("appliance.policy.arc.dkimpy")

MAX_ARC_SETS = 10  # RFC 8617 4.2.1 allows 50; a longer chain than this is refused as "fail"


@dataclass(frozen=True)
class ArcResult:
    result: str  # pass, fail, none, temperror
    sealer: str  # d= of the newest ARC-Seal when the chain validates, else ""
    reason: str = ""


def arc_of(session: Session) -> ArcResult | None:
    return noted(session, ArcVerify.name, ArcResult)


class ArcVerify(InboundCheck):
    name = "arc_verify"

    def verify(self, session: Session, message: Message) -> ArcResult:
        seals = sum(1 for f in message.fields if f.split(b":", 1)[0].strip().lower() == b"arc-seal")
        if seals == 0:
            result = ArcResult("none", "")
        elif seals > MAX_ARC_SETS:
            result = ArcResult("fail", "", f"{seals} ARC sets (more than {MAX_ARC_SETS})")
        else:
            result = self._validate(message)
        metrics.INBOUND_AUTH.labels("arc", result.result).inc()
        log.info("arc ip=%s: %s%s%s", session.client_ip, result.result,
                 f" sealer={result.sealer}" if result.sealer else "", f" ({result.reason})" if result.reason else "")
        return result

    def _validate(self, message: Message) -> ArcResult:
        try:
            cv, sets, comment = dkim.ARC(message.to_bytes(), logger=_dkimpy_log,
                                         timeout=self.dns.timeout).verify(dnsfunc=self.dns.dkim_txt)
        except DnsTempError as exc:
            return ArcResult("temperror", "", str(exc))
        except Exception as exc:  # dkimpy's DKIMException, or a set it cannot even parse
            return ArcResult("fail", "", f"{exc.__class__.__name__}: {exc}"[:200])
        if cv == dkim.CV_Pass and sets:
            sealer = sets[0].get("as-domain", b"")
            sealer = sealer.decode("ascii", "replace").lower() if isinstance(sealer, bytes) else str(sealer)
            return ArcResult("pass", sealer)
        if cv is None or cv == dkim.CV_Fail:
            return ArcResult("fail", "", str(comment)[:200])
        return ArcResult("none", "", str(comment)[:200])
