"""BODY and BODYSTRUCTURE (RFC 9051 §7.5.2 "BODYSTRUCTURE", RFC 3501 §7.4.2, formal syntax §9 body).

Field by field as RFC 9051 §9 orders them:
  body-type-1part = (body-type-basic / body-type-msg / body-type-text) [SP body-ext-1part]
  body-type-basic = media-basic SP body-fields
  body-type-msg   = media-message SP body-fields SP envelope SP body SP body-fld-lines
  body-type-text  = media-text SP body-fields SP body-fld-lines
  body-fields     = body-fld-param SP body-fld-id SP body-fld-desc SP body-fld-enc SP body-fld-octets
  body-ext-1part  = body-fld-md5 [SP body-fld-dsp [SP body-fld-lang [SP body-fld-loc ...]]]
  body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]
  body-ext-mpart  = body-fld-param [SP body-fld-dsp [SP body-fld-lang [SP body-fld-loc ...]]]

Sizes are octets of the body with CRLF line ends; lines are its LF count. Where the RFCs
leave a choice the output is Dovecot's: media type and parameter names keep their case,
RFC 2231 parameters stay encoded (``name*``), a text part without charset gets
``("charset" "us-ascii")`` (RFC 2045 §5.2), body-fld-md5 is the Content-MD5 field's value,
a multipart without parts is shown with one empty text/plain part (RFC 9051 requires 1*body).
"""

from __future__ import annotations

from services.access.imapmsg import envelope, mimetree
from services.access.imapmsg.quote import nstring, nstring_nolf

_EMPTY = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0'


def _params(params: list[tuple[str, str]], default_charset: bool) -> bytes:
    items = [nstring(k) + b" " + nstring(v) for k, v in params]
    if default_charset and not any(k.lower() == "charset" for k, _ in params):
        items.append(b'"charset" "us-ascii"')
    if not items:
        return b"NIL"
    return b"(" + b" ".join(items) + b")"


def _value(part: mimetree.Part, name: str) -> bytes | None:
    f = part.first(name)
    return None if f is None else mimetree.field_value(f)


def _extension_tail(part: mimetree.Part) -> bytes:
    """body-fld-dsp SP body-fld-lang SP body-fld-loc"""
    disp = b"NIL"
    raw = _value(part, "content-disposition")
    if raw is not None:
        parsed = mimetree.parse_disposition(raw)
        if parsed is not None:
            disp = b"(" + nstring(parsed[0]) + b" " + _params(parsed[1], False) + b")"
    lang = b"NIL"
    raw = _value(part, "content-language")
    if raw is not None:
        tags = mimetree.parse_language(raw)
        if tags:
            lang = b"(" + b" ".join(nstring(t) for t in tags) + b")"
    return disp + b" " + lang + b" " + nstring_nolf(_value(part, "content-location"))


def size_and_lines(data: bytes, start: int, end: int) -> tuple[int, int]:
    """(octets as if every line ended in CRLF, number of lines) of DATA[start:end]."""
    lf = data.count(b"\n", start, end)
    crlf = data.count(b"\r\n", start, end)
    return end - start + (lf - crlf), lf


def _plain_7bit(part: mimetree.Part) -> bool:
    """Dovecot's message_part_data_is_plain_7bit(): a root part equal to the RFC 2045 §5.2
    default is written in canonical lower case, whatever case the fields used."""
    if part.multipart or part.message is not None or not part.is_text:
        return False
    if part.ctype is not None and part.csubtype.lower() != "plain":
        return False
    if part.params and (len(part.params) != 1 or part.params[0][0].lower() != "charset"
                        or part.params[0][1].lower() != "us-ascii"):
        return False
    enc = part.transfer_encoding
    if enc is not None and enc.lower() != "7bit":
        return False
    return not any(part.first(n) is not None for n in (
        "content-id", "content-description", "content-md5", "content-disposition", "content-language",
        "content-location"))


def write_root(data: bytes, root: mimetree.Part, extended: bool) -> bytes:
    if _plain_7bit(root):
        size, lines = size_and_lines(data, root.body_start, root.end)
        return _EMPTY.replace(b" 0 0", b" %d %d" % (size, lines)) + (b" NIL NIL NIL NIL)" if extended else b")")
    return write(data, root, extended)


def write(data: bytes, part: mimetree.Part, extended: bool) -> bytes:
    if part.multipart:
        if part.children:
            kids = b"".join(write(data, c, extended) for c in part.children)
        else:
            kids = _EMPTY + (b" NIL NIL NIL NIL)" if extended else b")")
        out = kids + b" " + nstring(part.csubtype)
        if extended:
            out += b" " + _params(part.params, False) + b" " + _extension_tail(part)
        return b"(" + out + b")"
    if part.ctype is None:
        mtype, msub = part.media_type
        params = _params([], mtype == "text")
    else:
        mtype, msub = part.ctype, part.csubtype
        params = _params(part.params, mtype.lower() == "text")
    enc = part.transfer_encoding
    size, lines = size_and_lines(data, part.body_start, part.end)
    fields = [
        nstring(mtype), nstring(msub), params,
        nstring_nolf(_value(part, "content-id")), nstring_nolf(_value(part, "content-description")),
        nstring(enc) if enc is not None else b'"7bit"',
        b"%d" % size,
    ]
    if part.message is not None:
        # RFC 9051 §7.5.2: a MESSAGE/RFC822 (or MESSAGE/GLOBAL) part carries the envelope and
        # body structure of the encapsulated message and the size of its body in lines.
        fields += [envelope.envelope_of(part.message.fields), write(data, part.message, extended),
                   b"%d" % lines]
    elif mtype.lower() == "text":
        fields.append(b"%d" % lines)
    if extended:
        fields += [nstring_nolf(_value(part, "content-md5")), _extension_tail(part)]
    return b"(" + b" ".join(fields) + b")"


def bodystructure(data: bytes, extended: bool, rev2: bool = False) -> bytes:
    """BODYSTRUCTURE (EXTENDED) or BODY (not EXTENDED) of message DATA.

    REV2: the session enabled IMAP4rev2, whose grammar (RFC 9051 §9 media-message) makes
    message/global an encapsulated message; IMAP4rev1's (RFC 3501 §9) does not.
    """
    data = mimetree.crlf(data)
    return write_root(data, mimetree.parse(data, rev2), extended)
