"""DKIM (RFC 6376) signatures of an outsider's message, verified by dkimpy against relay.resolver.

Every DKIM-Signature field is verified (at most ``MAX_SIGNATURES``, the first ones: a
message may carry an author's, a list's and a provider's); each result goes into
Authentication-Results and DMARC picks the aligned ones. A key that cannot be fetched
now is ``temperror`` (RFC 6376 6.1.2 TEMPFAIL), a missing or unusable key ``permerror``
(6.1.2 PERMFAIL), a signature that does not verify ``fail``. Nothing is refused here.

The check reads the message as bytes (header block and body, exactly as received);
it does not care how those bytes arrived.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from appliance import metrics
from appliance.policy.inbound_dns import DnsTempError, InboundCheck, noted, quiet_dkimpy_log

if TYPE_CHECKING:
    from appliance.message import Message
    from appliance.policy.session import Session

log = logging.getLogger("appliance.policy.dkim")
_dkimpy_log = quiet_dkimpy_log("appliance.policy.dkim.dkimpy")

MAX_SIGNATURES = 5  # each costs a DNS lookup and a public-key operation


@dataclass(frozen=True)
class DkimResult:
    result: str  # pass, fail, permerror, temperror
    domain: str  # d=
    selector: str  # s=
    identity: str  # i= (default @d)
    reason: str = ""


def dkim_of(session: Session) -> list[DkimResult]:
    return list(noted(session, DkimVerify.name, tuple) or ())


def _tags(field: bytes) -> dict[bytes, bytes]:
    value = field.split(b":", 1)[1]
    try:
        return parse_tag_value(value)
    except InvalidTagValueList:
        return {}


class DkimVerify(InboundCheck):
    name = "dkim_verify"

    def verify(self, session: Session, message: Message) -> tuple[DkimResult, ...]:
        signatures = [f for f in message.fields if f.split(b":", 1)[0].strip().lower() == b"dkim-signature"]
        results: list[DkimResult] = []
        if signatures:
            verifier = dkim.DKIM(message.to_bytes(), logger=_dkimpy_log, timeout=self.dns.timeout)
            for idx, sig in enumerate(signatures[:MAX_SIGNATURES]):
                results.append(self._verify(verifier, idx, _tags(sig)))
        for r in results or [DkimResult("none", "", "", "")]:
            metrics.INBOUND_AUTH.labels("dkim", r.result).inc()
            log.info("dkim ip=%s d=%s s=%s: %s%s", session.client_ip, r.domain or "-", r.selector or "-", r.result,
                     f" ({r.reason})" if r.reason else "")
        return tuple(results)

    def _verify(self, verifier: dkim.DKIM, idx: int, tags: dict[bytes, bytes]) -> DkimResult:
        domain = tags.get(b"d", b"").decode("ascii", "replace").lower()
        selector = tags.get(b"s", b"").decode("ascii", "replace")
        identity = tags.get(b"i", b"").decode("ascii", "replace") or (f"@{domain}" if domain else "")
        looked_up: list[str | None] = []

        def key(name: bytes | str, timeout: float = 5) -> str | None:
            record = self.dns.dkim_txt(name, timeout)
            looked_up.append(record)
            return record

        try:
            ok = verifier.verify(idx, dnsfunc=key)
        except DnsTempError as exc:
            return DkimResult("temperror", domain, selector, identity, f"key lookup failed: {exc}")
        except dkim.DKIMException as exc:
            # dkimpy reports a changed body (RFC 6376 3.7: the bh= tag does not match) as a
            # ValidationError like a malformed signature; the first is a "fail", the rest "permerror".
            result = "fail" if "body hash mismatch" in str(exc) else "permerror"
            return DkimResult(result, domain, selector, identity, str(exc).split(" (", 1)[0][:200])
        except Exception as exc:  # e.g. an algorithm this dkimpy cannot verify (ed25519 without PyNaCl)
            return DkimResult("permerror", domain, selector, identity, f"{exc.__class__.__name__}: {exc}"[:200])
        if ok:
            return DkimResult("pass", domain, selector, identity)
        if not looked_up or looked_up[-1] is None:
            # No signature dkimpy could use, or no key published: PERMFAIL, not a broken signature.
            return DkimResult("permerror", domain, selector, identity, "no usable key or signature")
        return DkimResult("fail", domain, selector, identity, "signature did not verify")
