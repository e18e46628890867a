"""What a check may look at: the session (who is talking) and the envelope (what they send)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from appliance.accounts import Account
    from appliance.registry.model import Member, Registry

Listener = Literal["mx", "submission", "submissions", "internal"]
Protocol = Literal["smtp", "imap", "pop", "console"]  # console: web console logins (XAUTHCHECK only)


@dataclass
class Session:
    """One client connection, as the policy sees it.

    ``registry`` is the snapshot taken when the connection started: a reload
    never changes the rules in the middle of a session.
    """

    listener: Listener
    client_ip: str
    registry: Registry | None = None
    registry_expired: bool = False
    protocol: Protocol = "smtp"
    helo: str = ""
    tls: bool = False
    # SHA-256 of the client certificate's SubjectPublicKeyInfo, when one was presented.
    client_spki: str | None = None
    peer_uid: int | None = None  # internal socket only (SO_PEERCRED)
    member: Member | None = None  # MX: the member owning client_ip
    # MX with relay.outsiders = "verify": a client that is not a member's relay, let in to be verified
    # (local domains only; SPF, DKIM, DMARC, ARC; docs/internet.md).
    outsider: bool = False
    login: str | None = None  # authenticated account (SMTP AUTH or XUSER)
    # Checks run in the event loop and never touch the database: the protocol layer looks these
    # up in a worker thread just before the hook that needs them. ``account`` is re-read before
    # every MAIL (so a disable or a hold takes effect at once); ``recipient_owner`` is the account
    # that RCPT's address belongs to (None: no such account), looked up before every RCPT, with
    # ``recipient_account`` its record (for the mailbox quota).
    account: Account | None = None
    recipient_owner: str | None = None
    recipient_account: Account | None = None
    sender: str | None = None  # current transaction's MAIL FROM ("" for the null sender)
    recipients: list[str] = field(default_factory=list)  # accepted RCPTs of the current transaction
    messages: int = 0  # messages accepted in this session
    # Free-form per-session state for checks (e.g. the limiter's keys); keyed by check name.
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def member_id(self) -> str | None:
        return self.member.id if self.member else None

    @property
    def authenticated(self) -> bool:
        return self.login is not None

    def reset_transaction(self) -> None:
        self.sender = None
        self.recipients = []


@dataclass(frozen=True)
class Envelope:
    """A message the spool has accepted (passed to ``on_accepted``)."""

    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    size: int
