"""A message as the relay handles it: raw bytes split into header fields and body.

Header changes are made on the raw bytes (never by re-serialising with the
``email`` package), so everything the client wrote, and any signature over it,
stays byte for byte as it was. Lines end in CRLF: the SMTP layer refused bare
CR and LF before a ``Message`` is built.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from email.header import decode_header, make_header

import dkim

log = logging.getLogger("appliance.message")

_FIELD_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+:")

# Headers DKIM signs (RFC 6376 5.4.1 recommends From and the ones a reader relies on).
DKIM_HEADERS = (
    b"from", b"sender", b"reply-to", b"subject", b"date", b"message-id", b"to", b"cc",
    b"mime-version", b"content-type", b"content-transfer-encoding", b"in-reply-to", b"references",
)


def _date(now: float | None) -> str:
    """An RFC 5322 date in UTC with a "+0000" zone (not "-0000", which means "zone unknown")."""
    t = dt.datetime.fromtimestamp(now if now is not None else time.time(), dt.UTC)
    return email.utils.format_datetime(t)


@dataclass
class Message:
    fields: list[bytes] = field(default_factory=list)  # each a whole field, continuation lines and CRLF included
    body: bytes = b""  # everything after the header fields, including the empty separator line

    @classmethod
    def parse(cls, raw: bytes) -> Message:
        fields: list[bytes] = []
        pos = 0
        n = len(raw)
        while pos < n:
            end = raw.find(b"\r\n", pos)
            end = n if end < 0 else end + 2
            line = raw[pos:end]
            if line[:1] in (b" ", b"\t") and fields:
                fields[-1] += line  # folded continuation (RFC 5322 2.2.3)
            elif _FIELD_NAME.match(line):
                fields.append(line)
            else:
                break  # the empty line (or the first line that is not a header) starts the body
            pos = end
        return cls(fields, raw[pos:])

    def to_bytes(self) -> bytes:
        return b"".join(self.fields) + self.body

    def __len__(self) -> int:
        return sum(len(f) for f in self.fields) + len(self.body)

    # --- reading ---------------------------------------------------------------------------

    @staticmethod
    def _name(f: bytes) -> bytes:
        return f.split(b":", 1)[0].strip().lower()

    def has(self, name: str) -> bool:
        n = name.lower().encode()
        return any(self._name(f) == n for f in self.fields)

    def header_values(self, name: str) -> list[str]:
        """Unfolded values of every NAME field, RFC 2047 words decoded."""
        n = name.lower().encode()
        out = []
        for f in self.fields:
            if self._name(f) == n:
                value = f.split(b":", 1)[1].decode("utf-8", "replace")
                value = re.sub(r"\r\n([ \t])", r"\1", value).strip()
                try:
                    value = str(make_header(decode_header(value)))
                except Exception:  # undecodable words: keep them as they came
                    pass
                out.append(value)
        return out

    # --- changing --------------------------------------------------------------------------

    def remove(self, *names: str) -> int:
        drop = {n.lower().encode() for n in names}
        before = len(self.fields)
        self.fields = [f for f in self.fields if self._name(f) not in drop]
        return before - len(self.fields)

    def prepend(self, name: str, value: str) -> None:
        self.fields.insert(0, f"{name}: {value}\r\n".encode())

    def append(self, name: str, value: str) -> None:
        self.fields.append(f"{name}: {value}\r\n".encode())


def add_missing_ids(message: Message, hostname: str, now: float | None = None) -> None:
    """Add Date: and Message-ID: when the client left them out (RFC 6409 8.2, 8.3)."""
    if not message.has("Date"):
        message.append("Date", _date(now))
    if not message.has("Message-ID"):
        message.append("Message-ID", f"<{uuid.uuid4().hex}@{hostname}>")


def strip_bcc(message: Message) -> int:
    """Remove Bcc: (and Resent-Bcc:) from the relayed copy (RFC 5322 3.6.3)."""
    return message.remove("Bcc", "Resent-Bcc")


_HELO_SAFE = re.compile(r"^[A-Za-z0-9.:\[\]_-]{1,255}$")


def _helo(text: str) -> str:
    """The client's HELO name as a trace field may carry it: anything odd is replaced, never copied."""
    return text if _HELO_SAFE.match(text) else "unknown"


def received(
    *, helo: str, client_ip: str, hostname: str, with_: str, recipients: list[str], tls: str | None = None,
    via: str | None = None, now: float | None = None,
) -> str:
    """A trace field value (RFC 5321 4.4); ``for`` only when there is one recipient, as Postfix does."""
    parts = [f"from {_helo(helo)} ([{client_ip}])"]
    if via:
        parts.append(f"({via})")
    parts.append(f"by {hostname} (ISP Mail Appliance) with {with_}")
    if tls:
        parts.append(f"({tls})")
    if len(recipients) == 1:
        parts.append(f"for <{recipients[0]}>")
    date = _date(now)
    return "\r\n\t".join(parts) + f"; {date}"


class DkimSigner:
    """DKIM-signs (dkimpy, rsa-sha256, relaxed/relaxed) mail whose From: domain is one of ``domains``."""

    def __init__(self, selector: str, key_pem: bytes, domains: list[str]) -> None:
        self.selector = selector.encode()
        self.key = key_pem
        self.domains = frozenset(d.lower() for d in domains)

    def domain_for(self, message: Message) -> str | None:
        froms = email.utils.getaddresses(message.header_values("From"))
        if len(froms) != 1 or "@" not in froms[0][1]:
            return None
        domain = froms[0][1].rsplit("@", 1)[1].lower()
        return domain if domain in self.domains else None

    def sign(self, message: Message) -> bool:
        domain = self.domain_for(message)
        if domain is None:
            return False
        present = {Message._name(f) for f in message.fields}
        headers = [h for h in DKIM_HEADERS if h in present]
        try:
            sig = dkim.sign(
                message.to_bytes(), self.selector, domain.encode(), self.key,
                canonicalize=(b"relaxed", b"relaxed"), include_headers=headers, linesep=b"\r\n",
            )
        except dkim.DKIMException as exc:
            # A header dkimpy cannot parse: send unsigned rather than refuse or retry forever.
            log.warning("DKIM signing for %s failed, sending unsigned: %s", domain, exc)
            return False
        message.fields.insert(0, sig)
        return True
