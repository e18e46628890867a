"""The header changes made to accepted mail: the "modifier" stage (as in Maddy), after the data checks.

A ``Modifier`` sees a message's header fields (the body stays in the spool,
streamed there as it arrived) and changes them. ``begin()`` runs once the
header section is complete and may return a ``BodyTap`` that is fed every body
byte as it is written (DKIM hashes the body that way); ``modify()`` runs after
the data checks accepted the message, in list order; in a worker thread when a
``blocking`` one applies (DKIM's RSA signature is pure Python). The result, ``Message.header_block()``, is
written into the queue file beside the body, so the body is never copied.

To add a modifier: one subclass here, placed in ``build()`` where it belongs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from appliance.message import DkimSigner, Message, add_missing_ids, received, strip_bcc

if TYPE_CHECKING:
    from appliance.policy.session import Session

class BodyTap(Protocol):
    def update(self, data: bytes) -> None: ...


class Modifier:
    name = "modifier"

    def begin(self, session: Session, message: Message, first_body: bytes) -> BodyTap | None:
        """The header fields are known (FIRST_BODY: the first body bytes); return a tap to see the body, or None."""
        return None

    def modify(self, session: Session, message: Message, tap: BodyTap | None) -> None:
        """Change MESSAGE's header fields (TAP: what ``begin`` returned, fed the whole body). Runs in a thread."""


def customer(session: Session) -> bool:
    """Mail a customer submits (not mail arriving from another box on port 25)."""
    return session.listener != "mx"


class StripBcc(Modifier):
    name = "strip_bcc"

    def modify(self, session: Session, message: Message, tap: BodyTap | None) -> None:
        if customer(session):
            strip_bcc(message)  # RFC 5322 3.6.3


class AddMissingIds(Modifier):
    name = "missing_ids"

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname

    def modify(self, session: Session, message: Message, tap: BodyTap | None) -> None:
        if customer(session):
            add_missing_ids(message, self.hostname)  # RFC 6409 8.2, 8.3


class DkimSign(Modifier):
    name = "dkim_sign"

    def __init__(self, signer: DkimSigner) -> None:
        self.signer = signer

    def begin(self, session: Session, message: Message, first_body: bytes) -> BodyTap | None:
        return self.signer.body_hash(message, first_body) if customer(session) else None

    def modify(self, session: Session, message: Message, tap: BodyTap | None) -> None:
        digest = getattr(tap, "digest", None)
        if digest is not None:
            self.signer.sign_headers(message, digest())


class Received(Modifier):
    """The trace field (RFC 5321 4.4: a relay MUST add one), outside any signature, on top."""

    name = "received"

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname

    def modify(self, session: Session, message: Message, tap: BodyTap | None) -> None:
        tls_text = session.notes.get("tls")
        if session.listener == "internal":
            with_, via = "ESMTPA", f"{session.protocol.upper()} submission"
        else:
            with_ = "ESMTP" + ("S" if session.tls else "") + ("A" if session.login else "")
            via = None
        message.prepend("Received", received(
            helo=session.helo, client_ip=session.client_ip, hostname=self.hostname, with_=with_,
            recipients=list(session.recipients), tls=tls_text if isinstance(tls_text, str) else None, via=via,
        ))


@dataclass
class Run:
    """The modifiers of one message: taps to feed while the body streams, then ``finish()``."""

    modifiers: Sequence[Modifier]
    session: Session
    message: Message
    taps: list[BodyTap | None]

    def body_taps(self) -> list[BodyTap]:
        return [t for t in self.taps if t is not None]

    def finish(self) -> bytes:
        """Apply every modifier; the final header block. Called in the spool thread that commits the
        message, after the last body byte went through the taps (DKIM's RSA never runs on the event loop)."""
        for m, tap in zip(self.modifiers, self.taps, strict=True):
            m.modify(self.session, self.message, tap)
        return self.message.header_block()


class Modifiers:
    def __init__(self, modifiers: Sequence[Modifier]) -> None:
        self.modifiers = tuple(modifiers)

    def begin(self, session: Session, message: Message, first_body: bytes) -> Run:
        return Run(self.modifiers, session, message, [m.begin(session, message, first_body) for m in self.modifiers])


def build(hostname: str, signer: DkimSigner | None) -> Modifiers:
    chain: list[Modifier] = [StripBcc(), AddMissingIds(hostname)]
    if signer is not None:
        chain.append(DkimSign(signer))  # signs the fields as they will be sent, Bcc gone and ids added
    chain.append(Received(hostname))
    return Modifiers(chain)
