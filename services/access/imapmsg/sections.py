"""BODY[section]<partial> and BINARY[section] (RFC 9051 §6.4.5, RFC 3516), byte-exact slices.

Part numbering (RFC 9051 §6.4.5): a multipart's parts are numbered 1..n; a non-multipart
entity has only part 1, its own body; a MESSAGE/RFC822 part's nested numbers refer to
the parts of the encapsulated message. HEADER, HEADER.FIELDS[.NOT] and TEXT after part
numbers refer to the message inside a MESSAGE/RFC822 part; MIME is the part's own MIME
header. HEADER.FIELDS returns the matching fields as stored (folding and duplicates kept,
in order, names compared case-insensitively) followed by the blank line.
"""

from __future__ import annotations

import base64
import binascii
import re

from services.access.imapmsg import mimetree
from services.access.imapproto.types import Section

_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
_QP_TRAILING_WS = re.compile(rb"[ \t]+(\r?\n)")


def locate(root: mimetree.Part, path: tuple[int, ...]) -> mimetree.Part | None:
    """The part at PATH (1-based numbers), or None if there is no such part.

    "1" of a non-multipart entity names the entity itself, once: after it only an
    encapsulated message has further parts (BODY[1.1] of a plain message does not exist,
    BODY[2.1] of a text part 2 inside a multipart is part 2's body, as in Dovecot).
    """
    node = root
    stayed = False
    for i, n in enumerate(path):
        if node.multipart:
            if not 1 <= n <= len(node.children):
                return None
            node = node.children[n - 1]
            stayed = False
        else:
            if n != 1 or stayed:
                return None
            stayed = True
        if i + 1 < len(path) and not node.multipart and node.message is not None:
            node = node.message
            stayed = False
    return node


def _header_fields(part: mimetree.Part, names: tuple[str, ...], negate: bool) -> bytes:
    wanted = {n.lower() for n in names}
    kept = [f for f in part.fields if (f.lname in wanted) != negate]
    out = b"".join(f.raw for f in kept)
    # The last stored field may lack its line break (a header that runs to the end of data).
    if out and not out.endswith(b"\n"):
        out += b"\r\n"
    # RFC 9051 §6.4.5 includes the blank line that ends the header. A header that ran to the
    # end of the data has none; Dovecot then ends the result with one only if the header's
    # last field was selected (or nothing was), and so do we.
    if part.blank_line or not kept or not part.fields or kept[-1] is part.fields[-1]:
        out += b"\r\n"
    return out


def extract(data: bytes, root: mimetree.Part, sec: Section) -> bytes | None:
    """The bytes of BODY[SEC] (without <partial>), or None if the part does not exist."""
    node = locate(root, sec.part)
    if node is None:
        return None
    if sec.text is None:
        if not sec.part:
            return data
        return data[node.body_start : node.end]
    if sec.text == "MIME":
        # RFC 9051 §6.4.5: "The MIME part specifier refers to the [MIME-IMB] header for this part."
        return data[node.start : node.body_start]
    msg = node
    if sec.part:
        if node.message is None:
            # HEADER/TEXT only exist for a message: the top level or a MESSAGE/RFC822 part
            # (RFC 9051 §6.4.5). The part exists, so the answer is empty rather than NIL.
            return b""
        msg = node.message
    if sec.text == "HEADER":
        return data[msg.start : msg.body_start]
    if sec.text == "TEXT":
        return data[msg.body_start : msg.end]
    return _header_fields(msg, sec.fields, sec.text == "HEADER.FIELDS.NOT")


def partial(value: bytes, origin: int, count: int) -> bytes:
    """BODY[...]<origin.count> (RFC 9051 §6.4.5): COUNT octets from ORIGIN; empty past the end."""
    return value[origin : origin + count]


def _decode_base64(body: bytes) -> bytes:
    """RFC 2045 §6.8: characters outside the alphabet are ignored; a partial final quantum
    is decoded as far as it goes instead of failing the whole part."""
    clean = _B64_JUNK.sub(b"", body.split(b"=", 1)[0])
    usable = len(clean) - len(clean) % 4
    out = base64.b64decode(clean[:usable]) if usable else b""
    rest = clean[usable:]
    if len(rest) >= 2:
        out += binascii.a2b_base64(rest + b"=" * (4 - len(rest)))
    return out


def _decode_qp(body: bytes) -> bytes:
    # RFC 2045 §6.7 rule 3: trailing whitespace on a line is transport padding and is removed.
    return binascii.a2b_qp(_QP_TRAILING_WS.sub(rb"\1", body))


IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})


def decode_body(data: bytes, node: mimetree.Part) -> bytes | None:
    """The body of NODE with its Content-Transfer-Encoding removed; None if the CTE is unknown."""
    body = data[node.body_start : node.end]
    if node.multipart or node.message is not None:
        return body
    enc = (node.transfer_encoding or "7bit").lower()
    if enc in IDENTITY_ENCODINGS:
        return body
    if enc == "base64":
        return _decode_base64(body)
    if enc == "quoted-printable":
        return _decode_qp(body)
    return None


class UnknownCTE(Exception):
    """BINARY of a part whose transfer encoding the server cannot decode (RFC 3516 §4.3 UNKNOWN-CTE)."""


_CTE_BINARY = b"Content-Transfer-Encoding: binary\r\n"


def _decoded_entity(data: bytes, root: mimetree.Part, start: int | None = None) -> bytes:
    """The whole entity with every leaf's transfer encoding undone and its
    Content-Transfer-Encoding field replaced by "binary" (so the result is a valid MIME
    message, RFC 3516 §4.2), as Dovecot does for BINARY[]."""
    out: list[bytes] = []
    pos = root.start if start is None else start
    for part in root.walk():
        if part.multipart or part.message is not None:
            continue
        if (part.transfer_encoding or "7bit").lower() in IDENTITY_ENCODINGS:
            continue
        decoded = decode_body(data, part)
        if decoded is None:
            raise UnknownCTE()
        out.append(data[pos : part.start])
        out += [f.raw for f in part.fields if f.lname != "content-transfer-encoding"]
        out.append(_CTE_BINARY)
        header_end = part.start + sum(len(f.raw) for f in part.fields)
        out.append(data[header_end : part.body_start] if part.blank_line else b"\r\n")
        out.append(decoded)
        pos = part.end
    out.append(data[pos : root.end])
    return b"".join(out)


def binary_of(data: bytes, root: mimetree.Part, part: tuple[int, ...]) -> bytes | None:
    """BINARY[PART]: the decoded content, or None if there is no such part.

    Raises UnknownCTE when a transfer encoding is unknown (the server answers NO [UNKNOWN-CTE]).
    """
    if not part:
        return _decoded_entity(data, root)
    node = locate(root, part)
    if node is None:
        return None
    if node.message is not None:
        return _decoded_entity(data, node.message)
    if node.multipart:
        return _decoded_entity(data, node, node.body_start)
    decoded = decode_body(data, node)
    if decoded is None:
        raise UnknownCTE()
    return decoded
