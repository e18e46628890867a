"""Mailbox names between the wire and the store: opening, the Outbox, output encoding."""

from __future__ import annotations

from typing import Any

from services.access.imap import storeio
from services.access.imap.errors import No
from services.access.imapproto import mutf7

DELIMITER = "."


def mailbox_arg(name: str) -> str:
    """NAME as the store knows it: INBOX in any case is INBOX (RFC 9051 §5.1)."""
    return "INBOX" if name.upper() == "INBOX" else name


def wire_name(s: Any, name: str) -> bytes:
    """NAME for a response: modified UTF-7 (RFC 3501 §5.1.3), or UTF-8 once IMAP4rev2 is on
    (RFC 9051 §5.1); always a quoted string (or a literal if it cannot be quoted)."""
    raw = name.encode("utf-8") if s.rev2 else mutf7.encode(name)
    if b"\r" in raw or b"\n" in raw or b"\0" in raw:
        return b"{%d}\r\n" % len(raw) + raw
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def is_outbox(s: Any, name: str) -> bool:
    outbox = s.backend.cfg.access.outbox
    return bool(outbox) and name.lower() == outbox.lower()


async def open_mailbox(s: Any, name: str, missing_code: str = "NONEXISTENT") -> Any:
    """The store's Mailbox NAME; a missing one is NO [MISSING_CODE] (TRYCREATE for APPEND/COPY,
    RFC 9051 §6.3.12, §6.4.7)."""
    from appliance.mailstore import MailstoreError

    try:
        return await storeio.run(s.store.mailbox, name)
    except MailstoreError as exc:
        code = getattr(exc, "code", None)
        if code in (None, "NONEXISTENT"):
            raise No(f"Mailbox doesn't exist: {name}" if code else str(exc),
                     missing_code if code else "CANNOT") from None
        raise
