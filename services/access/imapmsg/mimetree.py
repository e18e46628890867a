"""A message parsed once into a MIME tree of byte offsets (RFC 2045, RFC 2046, RFC 5322).

Every part records where its header block, its body and its end are in the original
bytes, so BODY[section] is a slice and sizes/line counts come from offsets. Parsing is
tolerant the way Dovecot's message-parser is, because what a client sees must match the
reference server on broken input too:

- a header block ends at the first empty line, at a boundary line of an enclosing
  multipart, or at the end of the data (no blank line: everything is header);
- a boundary line is any line that *starts with* ``--boundary`` (RFC 2046 §5.1.1 asks for
  optional whitespace only after it; Dovecot accepts any suffix), checked innermost first;
  ``--boundary--`` closes the multipart and what follows is epilogue up to an enclosing
  boundary; a missing close delimiter ends the multipart where its parent ends;
- the line break before a boundary line belongs to the boundary (RFC 2046 §5.1.1), so it
  is not part of the preceding body;
- bare LF line endings are accepted everywhere (sizes are reported as if CRLF).

Content-Type and friends are parsed with the same tokenizer rules as Dovecot
(``rfc822-parser.c`` / ``rfc2231-parser.c``): parameters keep their case; RFC 2231
continuations (``name*0*``, ``name*1``) are joined into ``name*`` with the value still
percent-encoded, which is what IMAP servers put into BODYSTRUCTURE. ``Part.param()``
gives the decoded value (RFC 2231 §4) for callers that need the meaning (charset).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field

from services.access.imapmsg import rfc822


@dataclass(eq=False)
class HeaderField:
    name: str  # as written, without the colon and trailing whitespace
    raw: bytes  # the whole field: name, colon, value, folded lines and their line breaks
    value: bytes  # after the colon, leading whitespace removed, line breaks kept
    lname: str = ""  # the name lower-cased, for matching

    def __post_init__(self) -> None:
        if not self.lname:
            self.lname = self.name.lower()


@dataclass(eq=False)
class Part:
    """One MIME entity. ``start`` is its header block, ``body_start`` its body, ``end`` one past it."""

    start: int
    body_start: int = 0
    end: int = 0
    fields: list[HeaderField] = field(default_factory=list)
    ctype: str | None = None  # None: no Content-Type field (RFC 2045 §5.2 default applies)
    csubtype: str = ""
    params: list[tuple[str, str]] = field(default_factory=list)  # raw (name, value), Dovecot order
    children: list[Part] = field(default_factory=list)  # multipart body parts
    message: Part | None = None  # the encapsulated message of message/rfc822 (and message/global)
    multipart: bool = False
    blank_line: bool = True  # the header block ended with an empty line (not a boundary or the end)
    default_digest: bool = False  # Content-Type defaulted to message/rfc822 inside multipart/digest

    # --- header access --------------------------------------------------------------

    def header(self, name: str) -> list[HeaderField]:
        lname = name.lower()
        return [f for f in self.fields if f.lname == lname]

    def last(self, name: str) -> HeaderField | None:
        found = self.header(name)
        return found[-1] if found else None

    def first(self, name: str) -> HeaderField | None:
        found = self.header(name)
        return found[0] if found else None

    # --- media type -----------------------------------------------------------------

    @property
    def media_type(self) -> tuple[str, str]:
        """(type, subtype) lower-cased, with the RFC 2045 §5.2 / RFC 2046 §5.1.5 defaults."""
        if self.ctype is None:
            return ("message", "rfc822") if self.default_digest else ("text", "plain")
        return self.ctype.lower(), self.csubtype.lower()

    @property
    def is_text(self) -> bool:
        return self.media_type[0] == "text"

    def param(self, name: str) -> str | None:
        """A Content-Type parameter's value, RFC 2231 decoded (charset'lang'%XX) when extended."""
        return decoded_param(self.params, name)

    @property
    def charset(self) -> str:
        return (self.param("charset") or "us-ascii").strip()

    @property
    def transfer_encoding(self) -> str | None:
        """The Content-Transfer-Encoding token as written, or None if absent/invalid (then 7bit)."""
        f = self.first("content-transfer-encoding")
        if f is None:
            return None
        p = rfc822.Parser(f.value)
        p.skip_cfws()
        tok = p.mime_token()
        p.skip_cfws()
        return tok if tok and p.at_end() else None

    def walk(self) -> list[Part]:
        """This part and every part below it, in part-number order."""
        out = [self]
        for c in self.children:
            out.extend(c.walk())
        if self.message is not None:
            out.extend(self.message.walk())
        return out


def decoded_param(params: list[tuple[str, str]], name: str) -> str | None:
    lname = name.lower()
    for k, v in params:
        if k.lower() == lname:
            return v
    for k, v in params:
        if k.lower() == lname + "*":
            # RFC 2231 §4: charset'language'percent-encoded
            parts = v.split("'", 2)
            if len(parts) == 3:
                charset, _lang, text = parts
                try:
                    return urllib.parse.unquote(text, encoding=charset or "us-ascii", errors="replace")
                except LookupError:
                    return urllib.parse.unquote(text, encoding="latin-1")
            return urllib.parse.unquote(v, encoding="latin-1")
    return None


# --- parameters (Dovecot rfc2231_parse) ------------------------------------------------

_RFC2231_KEY = re.compile(r"^(.*?)\*(?:(\d+))?(\*)?$")


def parse_params(p: rfc822.Parser) -> list[tuple[str, str]]:
    """``*(";" attribute "=" value)`` (RFC 2045 §5.1), continuing past broken ones as Dovecot does.

    RFC 2231 §3 continuations are merged: ``k*0*=a; k*1=b`` becomes ``("k*", "ab")``; if an
    index is missing they stay as written. Merged parameters come after the plain ones.
    """
    plain: list[tuple[str, str]] = []
    ext: list[tuple[str, int, bool, str]] = []  # key, index, extended, value
    while not p.at_end():
        kv = _one_param(p)
        if kv is None:
            p.pos += 1  # Dovecot: "try to continue anyway" one byte further
            continue
        key, value = kv
        m = _RFC2231_KEY.match(key) if "*" in key else None
        if m is None:
            plain.append((key, value))
        else:
            ext.append((m.group(1), int(m.group(2) or 0), m.group(3) is not None or m.group(2) is None, value))
    if not ext:
        return plain
    ext.sort(key=lambda e: (e[0].lower(), e[1]))
    i = 0
    while i < len(ext):
        j = i
        ok = True
        while j < len(ext) and ext[j][0].lower() == ext[i][0].lower():
            if ext[j][1] != j - i:
                ok = False
            j += 1
        group = ext[i:j]
        if ok:
            key = group[0][0] + ("*" if group[0][2] else "")
            plain.append((key, "".join(e[3] for e in group)))
        else:
            for k, idx, extended, v in group:
                plain.append((f"{k}*{idx}*" if extended else f"{k}*{idx}", v))
        i = j
    return plain


def _one_param(p: rfc822.Parser) -> tuple[str, str] | None:
    if p.peek() != ord(";"):
        return None
    p.pos += 1
    if not p.skip_cfws():
        return None
    key = p.mime_token()
    if p.peek() != ord("="):
        return None
    p.pos += 1
    if not p.skip_cfws():
        return key, ""
    c = p.peek()
    if c == ord('"'):
        value = p.quoted_string()
        if value is None:
            return None
    elif c == ord("="):  # Dovecot's workaround for name==?utf-8?b?...?=
        start = p.pos
        while not p.at_end() and p.data[p.pos] not in b"; \t\r\n":
            p.pos += 1
        value = p.data[start : p.pos].decode("utf-8", "surrogateescape")
        p.skip_cfws()
    else:
        value = p.mime_token()
        p.skip_cfws()
    return key, value


def parse_content_type(value: bytes) -> tuple[str, str, list[tuple[str, str]]]:
    """(type, subtype, params) as written. Broken values give ("", "", []) as in Dovecot,
    except a lone type token ("text") which keeps the type with an empty subtype."""
    p = rfc822.Parser(value)
    p.skip_cfws()
    mtype = p.mime_token()
    if not mtype:
        return "", "", []
    if p.at_end():
        return mtype, "", []
    p.skip_cfws()
    if p.at_end():
        return mtype, "", []
    if p.peek() != ord("/"):
        return "", "", []
    p.pos += 1
    p.skip_cfws()
    sub = p.mime_token()
    if not sub:
        return "", "", []
    p.skip_cfws()
    if not p.at_end() and p.peek() != ord(";"):
        return "", "", []
    return mtype, sub, parse_params(p)


def parse_disposition(value: bytes) -> tuple[str, list[tuple[str, str]]] | None:
    p = rfc822.Parser(value)
    p.skip_cfws()
    kind = p.mime_token()
    if not kind:
        return None
    p.skip_cfws()
    return kind, parse_params(p)


def parse_language(value: bytes) -> list[str]:
    """Content-Language (RFC 3282): a comma-separated list of language tags."""
    p = rfc822.Parser(value)
    out: list[str] = []
    while True:
        p.skip_cfws()
        if p.at_end():
            break
        tok = p.mime_token()
        if tok:
            out.append(tok)
        p.skip_cfws()
        if p.at_end():
            break
        if p.peek() != ord(","):
            break
        p.pos += 1
    return out


# --- the parser ------------------------------------------------------------------------


# Caps on what a message can make the parser build (Dovecot's message-parser defaults):
# deeper or further parts are kept as opaque leaves, so no message exhausts the stack or memory.
MAX_NESTING = 100
MAX_PARTS = 10000


class _Cursor:
    """Line scanning over DATA; a line is up to and including its LF."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.n = len(data)
        self.parts = 0  # parts created so far (MAX_PARTS)

    def line_end(self, pos: int) -> int:
        """Offset just past the line starting at POS (past its LF, or the end of data)."""
        i = self.data.find(b"\n", pos)
        return self.n if i < 0 else i + 1

    def boundary_at(self, pos: int, bounds: list[bytes]) -> tuple[int, bool] | None:
        """(index into BOUNDS, closing?) if the line at POS is a boundary line."""
        d = self.data
        if not d.startswith(b"--", pos):
            return None
        for i, b in enumerate(bounds):
            if d.startswith(b, pos + 2):
                return i, d.startswith(b"--", pos + 2 + len(b))
        return None

    def next_boundary(self, pos: int, bounds: list[bytes]) -> tuple[int, int, bool] | None:
        """The first boundary line at or after line start POS: (line offset, index, closing)."""
        if not bounds:
            return None
        d = self.data
        line = pos
        while line < self.n:
            hit = self.boundary_at(line, bounds)
            if hit is not None:
                return line, hit[0], hit[1]
            j = d.find(b"\n--", line)
            if j < 0:
                return None
            line = j + 1
        return None

    def before_break(self, line: int, floor: int) -> int:
        """End of the content before the boundary line at LINE: its line break is not content."""
        end = line
        if end > floor and self.data[end - 1 : end] == b"\n":
            end -= 1
            if end > floor and self.data[end - 1 : end] == b"\r":
                end -= 1
        return end


def _parse_header(cur: _Cursor, pos: int, bounds: list[bytes]) -> tuple[list[HeaderField], int, bool | None]:
    """Fields from POS; returns (fields, body start, stopped at a boundary line: True,
    at an empty line: False, at the end of data: None)."""
    d = cur.data
    fields: list[HeaderField] = []
    while pos < cur.n:
        if bounds and cur.boundary_at(pos, bounds) is not None:
            return fields, pos, True
        end = cur.line_end(pos)
        line = d[pos:end]
        if line in (b"\r\n", b"\n", b"\r"):
            return fields, end, False
        if line[:1] in (b" ", b"\t") and fields:
            f = fields[-1]
            f.raw += line
            f.value += line
        else:
            name, colon, rest = line.partition(b":")
            if colon:
                value = rest.lstrip(b" \t")
            else:
                name, value = line.rstrip(b"\r\n"), b""
            fields.append(HeaderField(name.rstrip(b" \t").decode("utf-8", "surrogateescape"), line, value))
        pos = end
    return fields, cur.n, None


def _strip_break(value: bytes) -> bytes:
    """A field value without its final line break (folded breaks stay)."""
    if value.endswith(b"\r\n"):
        return value[:-2]
    if value.endswith(b"\n"):
        return value[:-1]
    return value


def field_value(f: HeaderField) -> bytes:
    return _strip_break(f.value)


def _classify(part: Part) -> None:
    f = part.first("content-type")
    if f is None:
        return
    part.ctype, part.csubtype, part.params = parse_content_type(field_value(f))


def _boundary(part: Part) -> bytes | None:
    for k, v in part.params:
        if k.lower() == "boundary" and v:
            return v.encode("utf-8", "surrogateescape")
    return None


def _parse_part(cur: _Cursor, pos: int, bounds: list[bytes], digest_child: bool,
                rev2: bool, depth: int = 0) -> tuple[Part, int]:
    """Parse the entity at POS; returns it and the offset of the line that ended it."""
    part = Part(start=pos, default_digest=digest_child)
    cur.parts += 1
    part.fields, part.body_start, stop = _parse_header(cur, pos, bounds)
    part.blank_line = stop is False
    _classify(part)
    if stop:
        part.end = part.body_start = max(pos, cur.before_break(part.body_start, pos))
        # An empty body: the header's last line break belongs to the boundary.
        return part, _line_after_break(cur, part.end)
    mtype, msub = part.media_type
    if depth >= MAX_NESTING or cur.parts >= MAX_PARTS:
        return _leaf_end(cur, part, bounds)
    if mtype == "multipart":
        part.multipart = True
        b = _boundary(part)
        if b is None:
            return _leaf_end(cur, part, bounds)
        return _parse_multipart(cur, part, [b, *bounds], msub == "digest", rev2, depth)
    if mtype == "message" and (msub == "rfc822" or (rev2 and msub == "global")):
        # RFC 2046 §5.2.1 (and RFC 6532 §3.7 / RFC 9051 §9 media-message for message/global):
        # the body is a complete message with its own header and structure.
        inner, stop = _parse_part(cur, part.body_start, bounds, False, rev2, depth + 1)
        part.message = inner
        part.end = inner.end
        return part, stop
    return _leaf_end(cur, part, bounds)


def _line_after_break(cur: _Cursor, end: int) -> int:
    """The line start after content END (skipping the line break that belongs to the boundary)."""
    d = cur.data
    if d.startswith(b"\r\n", end):
        return end + 2
    if d.startswith(b"\n", end):
        return end + 1
    return end


def _leaf_end(cur: _Cursor, part: Part, bounds: list[bytes]) -> tuple[Part, int]:
    hit = cur.next_boundary(part.body_start, bounds)
    if hit is None:
        part.end = cur.n
        return part, cur.n
    part.end = cur.before_break(hit[0], part.body_start)
    return part, hit[0]


def _parse_multipart(cur: _Cursor, part: Part, bounds: list[bytes], digest: bool, rev2: bool,
                     depth: int) -> tuple[Part, int]:
    pos = part.body_start
    while True:
        hit = cur.next_boundary(pos, bounds)
        if hit is None:  # no close delimiter: the multipart ends with the data
            part.end = cur.n
            return part, cur.n
        line, idx, closing = hit
        if idx != 0:  # an enclosing multipart's boundary ends this one too
            part.end = cur.before_break(line, part.body_start)
            return part, line
        if closing:
            # Epilogue (RFC 2046 §5.1.1): ignored up to an enclosing boundary or the end.
            # The close delimiter's own line break stays with it (Dovecot); a non-empty
            # epilogue gives up its last one to the enclosing boundary.
            close_end = cur.line_end(line)
            after = cur.next_boundary(close_end, bounds[1:])
            if after is None:
                part.end = cur.n
                return part, cur.n
            part.end = cur.before_break(after[0], close_end)
            return part, after[0]
        if cur.parts >= MAX_PARTS:
            # Too many parts: the rest of this multipart stays in its last part, unparsed.
            after = cur.next_boundary(line, bounds[1:])
            stop = cur.n if after is None else after[0]
            part.end = cur.n if after is None else cur.before_break(stop, part.body_start)
            if part.children and not part.children[-1].multipart and part.children[-1].message is None:
                part.children[-1].end = part.end
            return part, stop
        child, pos = _parse_part(cur, cur.line_end(line), bounds, digest, rev2, depth + 1)
        part.children.append(child)


def header_fields(data: bytes) -> list[HeaderField]:
    """The fields of DATA's top-level header, nothing else parsed (ENVELOPE needs no Content-Type)."""
    return _parse_header(_Cursor(data), 0, [])[0]


def parse_header_only(data: bytes) -> Part:
    """The top-level header of DATA without looking at the body (ENVELOPE, SORT, THREAD)."""
    part = Part(start=0)
    part.fields, part.body_start, stop = _parse_header(_Cursor(data), 0, [])
    part.blank_line = stop is False
    part.end = len(data)
    _classify(part)
    return part


def parse(data: bytes, rev2: bool = False) -> Part:
    """The MIME tree of a whole message (CRLF line ends; see ``crlf``).

    REV2: treat message/global as an encapsulated message (RFC 9051 §9 media-message);
    IMAP4rev1 and Dovecot treat it as an opaque part.
    """
    cur = _Cursor(data)
    root, _ = _parse_part(cur, 0, [], False, rev2)
    return root


def crlf(data: bytes) -> bytes:
    """DATA with bare LF line ends made CRLF, as IMAP requires on the wire (RFC 9051 §2.2)."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return _BARE_LF.sub(b"\r\n", data)


_BARE_LF = re.compile(rb"(?<!\r)\n")
