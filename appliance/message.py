"""A message as the relay handles it: raw bytes split into header fields and body.

Header changes are made on the raw bytes (never by re-serialising with the
``email`` package), so everything the client wrote, and any signature over it,
stays byte for byte as it was. Lines end in CRLF: the SMTP layer refused bare
CR and LF before a ``Message`` is built.

A message received over SMTP is never held whole: ``HeaderCollector`` keeps only
its header section in memory, the body goes to the spool as it arrives, and the
``Message`` reads it back on demand (``iter_body()``). DKIM hashes the body as
it streams past (``RelaxedBodyHash``) and signs the header block alone.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.header import decode_header, make_header

import dkim
from dkim.canonicalization import CanonicalizationPolicy
from dkim.crypto import parse_pem_private_key

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


MAX_HEADER_BYTES = 256 * 1024  # a header section larger than this is refused (552 5.3.4)


@dataclass
class Message:
    fields: list[bytes] = field(default_factory=list)  # each a whole field, continuation lines and CRLF included
    body: bytes = b""  # everything after the header fields, including the empty separator line
    # A streamed message: ``body`` is empty, the body is this many bytes read back by ``body_source``.
    body_size: int = 0
    body_source: Callable[[], Iterator[bytes]] | None = None

    def iter_body(self) -> Iterator[bytes]:
        """The body (from the empty separator line on) in blocks; for a streamed one read from the spool (blocking)."""
        if self.body_source is not None:
            yield from self.body_source()
        elif self.body:
            yield self.body

    def header_block(self) -> bytes:
        return b"".join(self.fields)

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
        return b"".join(self.fields) + b"".join(self.iter_body())

    def __len__(self) -> int:
        return sum(len(f) for f in self.fields) + len(self.body) + self.body_size

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


class HeaderCollector:
    """Holds the first bytes of a message until its header section is complete (at most MAX_HEADER_BYTES).

    ``feed()`` returns None while the header section is still arriving, then the
    body bytes (the first time: the part of the data after the header fields).
    ``message`` is the parsed header fields from then on. ``too_big`` is set when
    the header section does not end within the limit.
    """

    def __init__(self, limit: int = MAX_HEADER_BYTES) -> None:
        self.limit = limit
        self._buf = bytearray()
        self.message: Message | None = None
        self.too_big = False

    def feed(self, data: bytes) -> bytes | None:
        if self.message is not None:
            return data
        if self.too_big:
            return None
        self._buf += data
        buf = self._buf
        if buf.startswith(b"\r\n") or buf.find(b"\r\n\r\n") >= 0:
            return self._parse(bytes(buf))
        if len(buf) > self.limit:
            cut = buf.rfind(b"\r\n") + 2
            head = Message.parse(bytes(buf[:cut]))
            if not head.body:
                # Every complete line so far is a header field: the section does not end in time.
                self.too_big = True
                self._buf = bytearray()
                return None
            return self._parse(bytes(buf))
        return None

    def finish(self) -> bytes:
        """The data ended: whatever is held is parsed now; returns the body bytes not given out yet."""
        if self.message is not None or self.too_big:
            return b""
        return self._parse(bytes(self._buf))

    def _parse(self, raw: bytes) -> bytes:
        msg = Message.parse(raw)
        body, msg.body = msg.body, b""
        self.message = msg
        self._buf = bytearray()
        return body


_WSP_RUN = re.compile(rb"[\t ]+")
_WSP_EOL = re.compile(rb"[\t ]+\r\n")
CARRY_MAX = 65536  # bytes of one unfinished line the hash holds before hashing its settled part


class RelaxedBodyHash:
    """SHA-256 of a body under DKIM "relaxed" canonicalization (RFC 6376 3.4.4), fed in pieces of any size.

    Feed it the body from the empty separator line on (as ``Message.body``); the
    separator is not part of the DKIM body. Gives the same result as dkimpy's
    ``Relaxed.canonicalize_body`` over the whole body, with bounded memory.
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._skip = 2  # the separator CRLF
        self._carry = b""
        self._empty = 0  # empty lines seen but not hashed yet (trailing ones are ignored)
        self._mid = False  # part of the current line is hashed already

    def update(self, data: bytes) -> None:
        if self._skip:
            n = min(self._skip, len(data))
            data, self._skip = data[n:], self._skip - n
        buf = self._carry + data if self._carry else data
        last = buf.rfind(b"\r\n")
        if last >= 0:
            self._lines(buf[:last + 2])
            buf = buf[last + 2:]
        if len(buf) > CARRY_MAX:
            buf = self._settle(buf)
        self._carry = buf

    def _lines(self, text: bytes) -> None:
        """Hash whole lines."""
        if self._mid:
            i = text.find(b"\r\n") + 2
            self._h.update(_WSP_RUN.sub(b" ", _WSP_EOL.sub(b"\r\n", text[:i])))
            self._mid = False
            text = text[i:]
        canon = _WSP_RUN.sub(b" ", _WSP_EOL.sub(b"\r\n", text))
        core = canon.rstrip(b"\r\n")
        ends = (len(canon) - len(core)) // 2
        if not core:
            self._empty += ends
            return
        self._h.update(b"\r\n" * self._empty + core + b"\r\n")
        self._empty = ends - 1

    def _settle(self, part: bytes) -> bytes:
        """Hash a long unfinished line up to its last non-blank byte; return what must wait."""
        cut = len(part.rstrip(b" \t\r"))
        rest = part[cut:]
        if cut:
            self._h.update(b"\r\n" * self._empty + _WSP_RUN.sub(b" ", part[:cut]))
            self._empty = 0
            self._mid = True
        # Blanks only: a run counts as one space.
        return _WSP_RUN.sub(b" ", rest)

    def digest(self) -> bytes:
        if self._carry:
            # A last line without CRLF: RFC 6376 3.4.4 adds one.
            self.update(b"\r\n")
        elif self._mid:
            self._lines(b"\r\n")
        return self._h.digest()


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

    def body_hash(self, message: Message, first_body: bytes) -> RelaxedBodyHash | None:
        """A hash to feed the body to, if MESSAGE (its header fields) will be signed.

        FIRST_BODY is the start of the body: the empty separator line (or nothing: no body),
        else the message has no header/body split dkimpy accepts and goes unsigned.
        """
        if self.domain_for(message) is None or (first_body and not first_body.startswith(b"\r\n")):
            return None
        return RelaxedBodyHash()

    def sign_headers(self, message: Message, body_hash: bytes) -> bool:
        """Sign the header fields with a body hash computed while the body streamed (dkimpy does the header part)."""
        domain = self.domain_for(message)
        if domain is None:
            return False
        present = {Message._name(f) for f in message.fields}
        include = tuple(h for h in DKIM_HEADERS if h in present)
        try:
            signer = dkim.DKIM(message.header_block(), linesep=b"\r\n")
            signer.hasher = hashlib.sha256
            policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
            fields = [
                (b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", policy.to_c_value()), (b"d", domain.encode()),
                (b"i", b"@" + domain.encode()), (b"q", b"dns/txt"), (b"s", self.selector),
                (b"t", str(int(time.time())).encode()), (b"h", b" : ".join(include)),
                (b"bh", base64.b64encode(body_hash)),
                (b"b", b"0" * 60),  # as dkimpy: b= folds onto its own line
            ]
            sig = b"DKIM-Signature: " + signer.gen_header(fields, include, policy, b"DKIM-Signature",
                                                          parse_pem_private_key(self.key))
        except dkim.DKIMException as exc:
            log.warning("DKIM signing for %s failed, sending unsigned: %s", domain, exc)
            return False
        message.fields.insert(0, sig)
        return True

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
