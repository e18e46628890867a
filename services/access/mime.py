"""Raw MIME sections of a message for IMAP FETCH (RFC 3501 6.4.5), byte-exact.

Twisted's FETCH rebuilds headers from a dict (losing order, duplicates such as
Received:, and folding), so the access service slices the stored bytes itself
and only uses Twisted for ENVELOPE and BODYSTRUCTURE.
"""

from __future__ import annotations

import email.parser
import email.utils
import io
import re
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from typing import Any

_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"]+)"|([^\s;]+))', re.IGNORECASE)


def split_header(entity: bytes) -> tuple[bytes, bytes]:
    """(header including the blank line, body) of a CRLF entity."""
    if entity.startswith(b"\r\n"):
        return b"\r\n", entity[2:]
    i = entity.find(b"\r\n\r\n")
    if i < 0:
        return entity, b""
    return entity[: i + 4], entity[i + 4 :]


def header_lines(header: bytes) -> list[tuple[bytes, bytes]]:
    """[(lower-case field name, the field's raw bytes including folded lines and CRLF)]."""
    out: list[tuple[bytes, bytes]] = []
    for line in header.split(b"\r\n")[:-1]:
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and out:
            name, raw = out[-1]
            out[-1] = (name, raw + line + b"\r\n")
        else:
            out.append((line.split(b":", 1)[0].strip().lower(), line + b"\r\n"))
    return out


def header_fields(header: bytes, names: list[bytes], negate: bool) -> bytes:
    wanted = {n.lower() for n in names}
    kept = [raw for name, raw in header_lines(header) if (name in wanted) != negate]
    return b"".join(kept) + b"\r\n"


def _content_type(header: bytes) -> bytes:
    for name, raw in header_lines(header):
        if name == b"content-type":
            return raw.split(b":", 1)[1].replace(b"\r\n", b"")
    return b""


def subparts(entity: bytes) -> list[bytes] | None:
    """The body parts of a multipart ENTITY, or None if it is not multipart."""
    header, body = split_header(entity)
    ctype = _content_type(header)
    if not ctype.strip().lower().startswith(b"multipart/"):
        return None
    m = _BOUNDARY.search(ctype)
    if not m:
        return None
    boundary = b"--" + (m.group(1) or m.group(2))
    parts: list[bytes] = []
    pos = None
    data = b"\r\n" + body
    i = 0
    while True:
        j = data.find(b"\r\n" + boundary, i)
        if j < 0:
            break
        if pos is not None:
            parts.append(data[pos:j])
        after = j + 2 + len(boundary)
        if data[after : after + 2] == b"--":
            break
        eol = data.find(b"\r\n", after)
        if eol < 0:
            break
        pos = eol + 2
        i = eol
    return parts


def _is_message(entity: bytes) -> bool:
    return _content_type(split_header(entity)[0]).strip().lower().startswith(b"message/rfc822")


def locate(data: bytes, path: tuple[int, ...]) -> tuple[bytes, bool] | None:
    """The entity at 0-based PATH and whether it is a whole message (RFC 3501 6.4.5 part numbering).

    A message/rfc822 part stands for the message it carries; part 1 of a
    non-multipart entity is its body.
    """
    entity, is_message = data, True
    for p in path:
        parts = subparts(entity)
        if parts is None:
            if p != 0:
                return None
            entity, is_message = b"\r\n" + split_header(entity)[1], False
            continue
        if p >= len(parts):
            return None
        child = parts[p]
        if _is_message(child):
            entity, is_message = split_header(child)[1], True
        else:
            entity, is_message = child, False
    return entity, is_message


def text_parts(data: bytes) -> list[str]:
    """Decoded text of the leaf parts (for SEARCH BODY/TEXT, as Dovecot searches decoded text)."""
    out = []
    for part in message_from_bytes(data, policy=compat32).walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        if part.get_content_maintype() == "text" or not part.get_content_maintype():
            out.append(payload.decode(part.get_content_charset() or "utf-8", "replace"))
        else:
            out.append(payload.decode("latin-1"))
    return out


class ParsedMessage:
    """Twisted's IMessagePart view of stored bytes, for ENVELOPE, BODYSTRUCTURE and SEARCH."""

    def __init__(self, data: bytes, msg: Message | None = None) -> None:
        self.data = data
        self.msg = msg if msg is not None else message_from_bytes(data, policy=compat32)

    def getHeaders(self, negate: bool, *names: Any) -> dict[str, str]:
        wanted = {(n.decode() if isinstance(n, bytes) else n).lower() for n in names}
        out: dict[str, str] = {}
        for k, v in self.msg.items():
            k_l = k.lower()
            if (not names) or ((k_l in wanted) != negate):
                out.setdefault(k_l, str(v))
        return out

    def getBodyFile(self) -> io.BytesIO:
        return io.BytesIO(split_header(self.data)[1])

    def getSize(self) -> int:
        return len(self.data)

    def isMultipart(self) -> bool:
        return self.msg.is_multipart()

    def getSubPart(self, part: int) -> ParsedMessage:
        parts = subparts(self.data) or []
        sub = self.msg.get_payload(part)
        return ParsedMessage(parts[part] if part < len(parts) else b"", sub)


# --- BODY / BODYSTRUCTURE (RFC 3501 7.4.2) ----------------------------------------------


def nstring(value: str | bytes | None) -> bytes:
    """An IMAP nstring: NIL, a quoted string, or a literal when quoting cannot carry it."""
    if value is None:
        return b"NIL"
    raw = value.encode("utf-8", "replace") if isinstance(value, str) else value
    if b"\r" in raw or b"\n" in raw or not raw.isascii():
        return b"{%d}\r\n" % len(raw) + raw
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _params(pairs: list[tuple[str, str]]) -> bytes:
    if not pairs:
        return b"NIL"
    return b"(" + b" ".join(nstring(k.lower()) + b" " + nstring(v) for k, v in pairs) + b")"


def _header_params(msg: Message, name: str) -> tuple[str | None, list[tuple[str, str]]]:
    raw = msg.get(name)
    if raw is None:
        return None, []
    params = msg.get_params(header=name) or []
    main = params[0][0] if params else str(raw).split(";")[0].strip()
    rest = []
    for k, v in params[1:]:
        if isinstance(v, tuple):  # RFC 2231 continuation: (charset, language, value)
            v = email.utils.collapse_rfc2231_value(v)
        rest.append((k, str(v)))
    return main, rest


def _disposition(msg: Message) -> bytes:
    main, params = _header_params(msg, "content-disposition")
    if main is None:
        return b"NIL"
    return b"(" + nstring(main.lower()) + b" " + _params(params) + b")"


def body_structure(entity: bytes, extended: bool, envelope_of: Any, default_type: str = "text/plain") -> bytes:
    """BODYSTRUCTURE (EXTENDED) or BODY of a CRLF ENTITY, computed from its raw bytes."""
    header, body = split_header(entity)
    msg = email.parser.BytesHeaderParser(policy=compat32).parsebytes(header)
    ctype, params = _header_params(msg, "content-type")
    if not ctype or "/" not in ctype:
        ctype, params = default_type, ([("charset", "us-ascii")] if default_type == "text/plain" else [])
    maintype, subtype = (x.strip().lower() for x in ctype.split("/", 1))
    if maintype == "multipart":
        parts = subparts(entity) or []
        child_default = "message/rfc822" if subtype == "digest" else "text/plain"
        kids = b"".join(body_structure(p, extended, envelope_of, child_default) for p in parts) if parts else \
            body_structure(b"\r\n", extended, envelope_of)
        out = kids + b" " + nstring(subtype)
        if extended:
            out += b" " + _params(params) + b" " + _disposition(msg) + b" " + nstring(msg.get("content-language")) + \
                b" " + nstring(msg.get("content-location"))
        return b"(" + out + b")"
    fields = [
        nstring(maintype), nstring(subtype), _params(params),
        nstring(msg.get("content-id")), nstring(msg.get("content-description")),
        nstring((msg.get("content-transfer-encoding") or "7bit").strip().lower()),
        b"%d" % len(body),
    ]
    if maintype == "message" and subtype == "rfc822":
        fields.append(envelope_of(body))
        fields.append(body_structure(body, extended, envelope_of))
        fields.append(b"%d" % body.count(b"\n"))
    elif maintype == "text":
        fields.append(b"%d" % body.count(b"\n"))
    if extended:
        fields += [nstring(msg.get("content-md5")), _disposition(msg), nstring(msg.get("content-language")),
                   nstring(msg.get("content-location"))]
    return b"(" + b" ".join(fields) + b")"
