"""The shape of a policy check. Subclass ``Check`` and override only the hooks you need."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.message import Message
    from appliance.policy.session import Envelope, Session
    from appliance.policy.verdicts import Verdict


class Check:
    """A check with every hook answering "no objection" (None).

    Hooks run in the event loop: keep them quick (no network, no long disk I/O, no accounts
    database: the protocol layer looks up ``Session.account`` and ``Session.recipient_owner``
    in a worker thread before MAIL and RCPT).
    ``on_accepted`` runs after the spool confirmed the write; it counts successes
    and cannot refuse anything.
    """

    name = "check"

    def on_connect(self, session: Session) -> Verdict | None:
        return None

    def on_auth_check(self, session: Session, login: str | None = None) -> Verdict | None:
        """Before a password is checked (SMTP AUTH, or XAUTHCHECK from the access service).

        LOGIN is None when the client has not said whom it logs in as yet (SMTP AUTH, before
        the credentials are read)."""
        return None

    def on_auth(self, session: Session, login: str, ok: bool) -> Verdict | None:
        """After a password was checked (SMTP AUTH, or XAUTHFAIL / XAUTHOK from the access service).

        LOGIN may be "" when the access service could not pass it on."""
        return None

    def on_mail(self, session: Session, sender: str) -> Verdict | None:
        return None

    def on_rcpt(self, session: Session, recipient: str) -> Verdict | None:
        return None

    # Lookups that need the network (DNS: SPF, DKIM keys, DMARC, DNSBL) cannot run in the event
    # loop. A check that needs them overrides ``prepare_mail`` / ``prepare_data``: the pipeline
    # runs them in a worker thread just before the MAIL / DATA hooks (``Pipeline.prepare_*``),
    # and the check keeps what it found in ``session.notes`` for its ``on_*`` hook to judge.
    # They may block (bounded by relay.resolver.timeout); they give no verdict themselves.
    # Only outsiders' sessions are prepared: members and customers need no lookups (the registry and
    # AUTH vouch for them), so their mail never pays for a thread hop.
    def prepare_mail(self, session: Session, sender: str) -> None:
        return None

    def prepare_data(self, session: Session, message: Message) -> None:
        return None

    # A local recipient's mailbox (the quota's usage) is read the same way, in a worker thread just
    # before the RCPT hooks, for every session, but only when the recipient has an account here
    # (``session.recipient_account``): mail for other domains never pays for the thread hop.
    def prepare_rcpt(self, session: Session, recipient: str) -> None:
        return None

    def on_data(self, session: Session, message: Message) -> Verdict | None:
        return None

    def on_accepted(self, session: Session, envelope: Envelope) -> None:
        return None

    def on_disconnect(self, session: Session) -> None:
        """The connection ended (release per-connection counters)."""
        return None
