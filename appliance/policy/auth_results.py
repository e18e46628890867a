"""Authentication-Results (RFC 8601): forged ones of ours removed, ours added to outsiders' mail.

RFC 8601 5: a border MTA MUST remove (or render harmless) any Authentication-Results field
that claims this box's authserv-id before adding its own, or a sender could write
``dkim=pass`` into its own message and a reader's filter would believe it. That removal
applies to every message the relay accepts (a customer or member could forge one too);
fields of other ADMDs are kept (they are theirs, and ARC seals may cover them).

For outsiders (relay.outsiders = "verify") one field is added at the top with the results
of spf_verify, dkim_verify (one ``dkim=`` per signature), dmarc_verify and arc_verify,
formatted by the authres library. It runs after those checks and only for a message
that was not refused. ``X-Appliance-Junk`` (dmarc_verify's request to file a message in
Junk) is removed from every other message, so no client can set it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from appliance.policy.arc_verify import arc_of
from appliance.policy.check import Check
from appliance.policy.dkim_verify import dkim_of
from appliance.policy.dmarc_verify import JUNK_HEADER, dmarc_of
from appliance.policy.spf_verify import spf_of

if TYPE_CHECKING:
    from appliance.message import Message
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Session
    from appliance.policy.verdicts import Verdict

HEADER = "Authentication-Results"
_COMMENT = re.compile(r"^\s*(\((?:[^()\\]|\\.)*\)\s*)*")
_ID = re.compile(r'^"((?:[^"\\]|\\.)*)"|^([^\s;()"]+)')


def authserv_id(value: str) -> str:
    """The authserv-id an Authentication-Results value starts with (RFC 8601 2.2), lower-cased."""
    rest = _COMMENT.sub("", value, count=1)
    m = _ID.match(rest)
    if not m:
        return ""
    return (m.group(1) if m.group(1) is not None else m.group(2)).strip().lower()


def remove_ours(message: Message, our_id: str) -> int:
    """Drop every Authentication-Results field claiming OUR_ID; returns how many."""
    name = HEADER.lower().encode()
    keep = []
    for f in message.fields:
        head, _, value = f.partition(b":")
        if head.strip().lower() == name:
            text = re.sub(r"\r\n([ \t])", r"\1", value.decode("utf-8", "replace"))
            if authserv_id(text) == our_id.lower():
                continue
        keep.append(f)
    removed = len(message.fields) - len(keep)
    message.fields = keep
    return removed


def results_value(session: Session, our_id: str) -> str:
    """The field value for an outsider's message, from the notes of the verification checks."""
    from authres import DKIMAuthenticationResult, SPFAuthenticationResult
    from authres.arc import ARCAuthenticationResult
    from authres.dmarc import DMARCAuthenticationResult

    results: list[object] = []
    for d in dkim_of(session):
        results.append(DKIMAuthenticationResult(result=d.result, header_d=d.domain or None,
                                                header_s=d.selector or None, header_i=d.identity or None,
                                                reason=d.reason or None))
    if not results:
        results.append(DKIMAuthenticationResult(result="none"))
    spf = spf_of(session)
    if spf is not None:
        if spf.identity == "mailfrom":
            results.append(SPFAuthenticationResult(result=spf.result, smtp_mailfrom=spf.mailfrom))
        else:
            results.append(SPFAuthenticationResult(result=spf.result, smtp_helo=spf.helo))
    dmarc = dmarc_of(session)
    if dmarc is not None:
        results.append(DMARCAuthenticationResult(result=dmarc.result, header_from=dmarc.header_from or None,
                                                 policy=dmarc.policy or None))
    arc = arc_of(session)
    if arc is not None:
        results.append(ARCAuthenticationResult(result=arc.result))
    return ";\r\n\t".join([our_id, *(str(r) for r in results)])


class AuthResults(Check):
    name = "auth_results"

    def __init__(self, ctx: PolicyContext) -> None:
        self.our_id = ctx.cfg.authserv_id

    def on_data(self, session: Session, message: Message) -> Verdict | None:
        remove_ours(message, self.our_id)
        if not session.outsider:
            # Only dmarc_verify may ask for Junk (it runs before this, for outsiders only).
            message.remove(JUNK_HEADER)
        if session.outsider:
            message.prepend(HEADER, results_value(session, self.our_id))
        return None
