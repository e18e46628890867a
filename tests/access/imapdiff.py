"""Run one IMAP command script against two servers and normalize the answers for comparison.

A response is parsed into tokens (atoms, strings, literals, nested lists). What
legitimately differs between implementations is normalized away: the
human-readable text after a status, UIDVALIDITY values, the order of FETCH
items and of flags, \\Recent (session-dependent) and the EXISTS/RECENT pushes
that are informative only.
"""

from __future__ import annotations

import datetime
import email.utils
import re
import socket
import ssl
import time
from typing import Any

Token = Any


class RawIMAP:
    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, timeout: float = 30) -> None:
        # TIMEOUT bounds every read: a server that never answers fails the step, never hangs the test.
        s = socket.create_connection((host, port), timeout=timeout)
        self.sock: socket.socket = s
        self.buf = b""
        self.n = 0
        self.readline()
        self.command(b"STARTTLS")
        self.sock = ctx.wrap_socket(s)
        self.buf = b""

    def readline(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_response(self) -> bytes:
        """One response, literals included (as {n}\\r\\n + data)."""
        line = self.readline()
        out = line
        while (m := re.search(rb"\{(\d+)\}$", line)) is not None:
            data = self.read_exact(int(m.group(1)))
            line = self.readline()
            out += b"\r\n" + data + line
        return out

    def command(self, cmd: bytes, literal: bytes | None = None) -> tuple[list[bytes], bytes]:
        """Send CMD (with one synchronizing LITERAL appended); return (untagged responses, tagged response)."""
        self.n += 1
        tag = b"t%d" % self.n
        if literal is not None:
            self.sock.sendall(tag + b" " + cmd + b" {%d}\r\n" % len(literal))
            first = self.read_response()
            if first.startswith(tag + b" "):  # refused before the literal was sent
                return [], first[len(tag) + 1 :]
            self.sock.sendall(literal + b"\r\n")
        else:
            self.sock.sendall(tag + b" " + cmd + b"\r\n")
        untagged: list[bytes] = []
        while True:
            r = self.read_response()
            if r.startswith(tag + b" "):
                return untagged, r[len(tag) + 1 :]
            untagged.append(r)

    def close(self) -> None:
        try:
            self.command(b"LOGOUT")
        except (OSError, ConnectionError):
            pass
        self.sock.close()


def tokenize(data: bytes) -> list[Token]:
    """IMAP response tokens: bytes for atoms/strings/literals, lists for parenthesized groups."""
    pos = 0
    stack: list[list[Token]] = [[]]
    n = len(data)
    while pos < n:
        c = data[pos : pos + 1]
        if c in (b" ", b"\r", b"\n"):
            pos += 1
        elif c == b"(":
            stack.append([])
            pos += 1
        elif c == b")":
            done = stack.pop()
            stack[-1].append(done)
            pos += 1
        elif c == b'"':
            end = pos + 1
            val = b""
            while data[end : end + 1] != b'"':
                if data[end : end + 1] == b"\\":
                    end += 1
                val += data[end : end + 1]
                end += 1
            stack[-1].append(val)
            pos = end + 1
        elif c == b"{" or data[pos : pos + 2] == b"~{":  # a literal, or a literal8 (RFC 3516 BINARY)
            pos += c == b"~"
            close = data.index(b"}", pos)
            size = int(data[pos + 1 : close].rstrip(b"+"))
            start = close + 3
            stack[-1].append(data[start : start + size])
            pos = start + size
        else:
            m = re.match(rb"[^ ()\r\n\[]+(\[[^\]]*\](<\d+>)?)?", data[pos:])
            assert m is not None
            stack[-1].append(m.group(0))
            pos += len(m.group(0))
    return stack[0]


def _norm_flags(flags: list[Token]) -> list[bytes]:
    return sorted(f for f in flags if f.lower() != b"\\recent")


def _fetch_items(tokens: list[Token]) -> dict[bytes, Token]:
    items: dict[bytes, Token] = {}
    for i in range(0, len(tokens) - 1, 2):
        key = tokens[i].upper() if isinstance(tokens[i], bytes) else tokens[i]
        value = tokens[i + 1]
        if key == b"FLAGS":
            value = _norm_flags(value)
        items[key] = value
    return items


def _code(text: bytes) -> Token:
    """The response code of a status text, with volatile numbers normalized; the human text is dropped."""
    m = re.match(rb"\[([^\]]*)\]", text.strip())
    if not m:
        return None
    parts = m.group(1).split()
    name = parts[0].upper()
    if name in (b"UIDVALIDITY",):
        return [name]
    if name in (b"APPENDUID", b"COPYUID"):
        return [name, *parts[2:]]  # drop the UIDVALIDITY, keep the UIDs
    if name in (b"CAPABILITY", b"PERMANENTFLAGS", b"UNSEEN", b"HIGHESTMODSEQ", b"NONEXISTENT", b"CLOSED"):
        # CAPABILITY/PERMANENTFLAGS/UNSEEN are informative; NONEXISTENT (RFC 5530) is an optional
        # detail Dovecot leaves out; CLOSED/HIGHESTMODSEQ belong to CONDSTORE, which only Dovecot has.
        return None
    return parts


def normalize(untagged: list[bytes], tagged: bytes) -> tuple[Any, ...]:
    status, _, text = tagged.partition(b" ")
    out: list[Any] = []
    codes: list[Any] = []
    for r in untagged:
        first = r[2:].split(b" ", 1)[0].upper()
        if first in (b"OK", b"NO", b"BAD", b"BYE"):
            # Status responses: only the response code is comparable, the text is free-form.
            code = _code(r[2 + len(first) + 1 :])
            if code is not None:
                codes.append((first, code))
            continue
        toks = tokenize(r[2:]) if r.startswith(b"* ") else [r]
        if len(toks) >= 2 and toks[1] in (b"FETCH",):
            out.append((b"FETCH", toks[0], _fetch_items(toks[2])))
        elif len(toks) >= 2 and toks[1] in (b"EXISTS", b"EXPUNGE"):
            out.append((toks[1], toks[0]))
        elif len(toks) >= 2 and toks[1] == b"RECENT":
            continue
        elif toks and toks[0] in (b"SEARCH",):
            out.append((b"SEARCH", sorted(int(x) for x in toks[1:])))
        elif toks and toks[0] == b"FLAGS":
            out.append((b"FLAGS", _norm_flags(toks[1])))
        elif toks and toks[0] in (b"LIST", b"LSUB"):
            out.append((toks[0], sorted(a.lower() for a in toks[1]), toks[2], toks[3]))
        elif toks and toks[0] == b"STATUS":
            out.append((b"STATUS", toks[1], dict(zip(toks[2][::2], toks[2][1::2], strict=True))))
        else:
            out.append(tuple(toks))
    # Order matters for EXPUNGE and FETCH; the informative OK codes may come in any order.
    return (status.upper(), _code(text), out, sorted(codes, key=repr))


# --- The strict normalizer of the broad differential (tests/access/test_imap_diff_rfc.py) -------------
# It keeps the structure of every response and removes only what RFC 3501/9051 leave to the server:
# the human text, UIDVALIDITY and MODSEQ values (any strictly ascending numbers are right), the order
# of FETCH items, flags and LIST replies, the form of sequence sets (1:3 = 1,2,3), the case of MIME
# type names, dates the server chose itself, and capabilities outside the set the box advertises.

COMPARED_CAPABILITIES = frozenset(
    b"IMAP4REV1 STARTTLS LOGINDISABLED AUTH=PLAIN ENABLE ID LITERAL+ CONDSTORE QRESYNC ESEARCH SEARCHRES SORT "
    b"THREAD=REFERENCES THREAD=ORDEREDSUBJECT LIST-EXTENDED LIST-STATUS STATUS=SIZE BINARY MULTIAPPEND CATENATE "
    b"UIDPLUS MOVE SPECIAL-USE IDLE NAMESPACE UNSELECT QUOTA CHILDREN".split())
# Before authentication a server may advertise less (RFC 9051 §6.1.1): only what matters there is compared.
PREAUTH_CAPABILITIES = frozenset(b"IMAP4REV1 STARTTLS LOGINDISABLED AUTH=PLAIN".split())
_VOLATILE_CODES = (b"UIDVALIDITY", b"HIGHESTMODSEQ")  # the number is the server's choice, its presence is not
# RFC 5530's codes are hints a server may give or not (Dovecot: CLIENTBUG on STATUS of the selected
# mailbox, NONEXISTENT on RENAME but not on STATUS); the codes base RFCs require (TRYCREATE, READ-ONLY,
# UIDNEXT, BADCHARSET, UNKNOWN-CTE, OVERQUOTA...) are compared.
_OPTIONAL_CODES = frozenset(
    b"NONEXISTENT ALREADYEXISTS CLIENTBUG SERVERBUG CANNOT INUSE EXPUNGEISSUED CONTACTADMIN NOPERM LIMIT "
    b"CORRUPTION PRIVACYREQUIRED EXPIRED AUTHENTICATIONFAILED AUTHORIZATIONFAILED UNAVAILABLE".split())


def seqset(value: bytes) -> list[int] | bytes:
    """1:3,5 -> [1, 2, 3, 5] (a server may write a set either way); anything else unchanged."""
    if not re.fullmatch(rb"[0-9:,]+", value):
        return value
    out: list[int] = []
    for part in value.split(b","):
        lo, _, hi = part.partition(b":")
        a, b = int(lo), int(hi or lo)
        out.extend(range(min(a, b), max(a, b) + 1))
        if len(out) > 100_000:  # a bounded expansion: "1:4294967295" stays as written
            return value
    return sorted(set(out))


def _caps(toks: list[Token], preauth: bool) -> list[bytes]:
    wanted = PREAUTH_CAPABILITIES if preauth else COMPARED_CAPABILITIES
    return sorted(c.upper() for c in toks if isinstance(c, bytes) and c.upper() in wanted)


def _internaldate(value: bytes) -> bytes:
    """The instant (UTC), since a server may keep or drop the zone it was given; the server's own clock
    (an APPEND without a date) as a placeholder."""
    try:
        when = email.utils.parsedate_to_datetime(value.decode().replace("-", " ", 2))
    except (ValueError, TypeError):
        return value
    if abs(when.timestamp() - time.time()) < 600:
        return b"<server's clock>"
    return when.astimezone(datetime.UTC).strftime("%d-%b-%Y %H:%M:%S +0000").encode()


def _strict_code(text: bytes, preauth: bool = False) -> Token:
    m = re.match(rb"\[([^\]]*)\]", text.strip())
    if not m:
        return None
    toks = tokenize(m.group(1))
    name = toks[0].upper() if toks and isinstance(toks[0], bytes) else b""
    if name in _VOLATILE_CODES or name == b"BADCHARSET":  # BADCHARSET's list of charsets is optional
        return [name]
    if name in _OPTIONAL_CODES:
        return None
    if name in (b"APPENDUID", b"COPYUID"):
        return [name, *(seqset(t) for t in toks[2:])]
    if name == b"CAPABILITY":
        return [name, _caps(toks[1:], preauth)]
    if name == b"PERMANENTFLAGS" and len(toks) > 1:
        return [name, sorted(toks[1])]
    if name == b"MODIFIED":
        return [name, seqset(toks[1])]
    return [name, *toks[1:]]


def _body(b: Token) -> Token:
    """BODY/BODYSTRUCTURE with the case-insensitive parts (types, parameter names, encodings) upper-cased."""
    if not isinstance(b, list) or not b:
        return b
    up = lambda t: t.upper() if isinstance(t, bytes) else t  # noqa: E731
    params = lambda p: [up(x) if i % 2 == 0 else x for i, x in enumerate(p)] if isinstance(p, list) else p  # noqa: E731
    if isinstance(b[0], list):  # multipart: parts, then the subtype and the extension data
        i = next((k for k, x in enumerate(b) if not isinstance(x, list)), len(b))
        rest = b[i:]
        return [*(_body(x) for x in b[:i]), *([up(rest[0])] if rest else []), *([params(rest[1])] if len(rest) > 1 else []),
                *rest[2:]]
    out = [up(b[0]), up(b[1]), params(b[2]) if len(b) > 2 else None, *b[3:5], *([up(b[5])] if len(b) > 5 else []), *b[6:]]
    if len(out) > 8 and up(b[0]) == b"MESSAGE" and up(b[1]) == b"RFC822":
        out[8] = _body(out[8])
    return out[: len(b)]


def _strict_fetch(tokens: list[Token], today: bytes) -> dict[bytes, Token]:
    items: dict[bytes, Token] = {}
    for i in range(0, len(tokens) - 1, 2):
        key = tokens[i].upper() if isinstance(tokens[i], bytes) else repr(tokens[i]).encode()
        value = tokens[i + 1]
        if key == b"FLAGS":
            value = sorted(value)
        elif key == b"MODSEQ":
            value = [b"N"]
        elif key in (b"BODY", b"BODYSTRUCTURE"):
            value = _body(value)
        elif key == b"INTERNALDATE" and isinstance(value, bytes):
            value = _internaldate(value)
        items[key] = value
    return dict(sorted(items.items()))


def _inbox(name: Token) -> Token:
    """INBOX in any case is INBOX (RFC 3501 §5.1): a server may echo the client's spelling or its own."""
    return b"INBOX" if isinstance(name, bytes) and name.upper() == b"INBOX" else name


def _strict_untagged(toks: list[Token], today: bytes, preauth: bool = False) -> Token:
    if len(toks) >= 2 and toks[1] == b"FETCH" and isinstance(toks[2], list):
        return (b"FETCH", toks[0], _strict_fetch(toks[2], today))
    head = toks[0].upper() if toks and isinstance(toks[0], bytes) else b""
    if head == b"CAPABILITY":
        return (head, _caps(toks[1:], preauth))
    if head == b"ENABLED":  # RFC 7162 §3.2.3: QRESYNC implies CONDSTORE, a server may list both
        names = {t.upper() for t in toks[1:] if isinstance(t, bytes)}
        return (head, sorted(names - {b"CONDSTORE"} if b"QRESYNC" in names else names))
    if head in (b"SEARCH", b"SORT"):
        nums = [t for t in toks[1:] if isinstance(t, bytes)]
        mod = [[b"MODSEQ", b"N"] for t in toks[1:] if isinstance(t, list)]
        return (head, sorted(int(x) for x in nums) if head == b"SEARCH" else [int(x) for x in nums], mod)
    if head == b"ESEARCH":
        rest = toks[1:]
        corr = rest.pop(0) if rest and isinstance(rest[0], list) else None
        uid = bool(rest) and rest[0] == b"UID"
        pairs = rest[1:] if uid else rest
        data = {pairs[i].upper(): (b"N" if pairs[i].upper() == b"MODSEQ" else seqset(pairs[i + 1]))
                for i in range(0, len(pairs) - 1, 2)}
        return (head, corr, uid, data)
    if head == b"FLAGS":
        return (head, sorted(toks[1]))
    if head in (b"LIST", b"LSUB"):
        ext = toks[4:]  # LIST-EXTENDED: (CHILDINFO (...)) and friends
        attrs = sorted(a.lower() for a in toks[1])
        if head == b"LSUB":  # RFC 3501 §6.3.9: LSUB "MAY contain different mailbox flags" than LIST
            attrs = [a for a in attrs if a == b"\\noselect"]
        return (head, attrs, toks[2], _inbox(toks[3]), ext)
    if head == b"STATUS":
        items = dict(zip(toks[2][::2], toks[2][1::2], strict=True))
        return (head, _inbox(toks[1]), dict(sorted((k.upper(), b"N" if k.upper() in (b"UIDVALIDITY", b"HIGHESTMODSEQ") else v)
                                           for k, v in items.items())))
    if head == b"ID":
        return (head,)  # the server's name and version (RFC 2971 lets it send NIL)
    if head == b"VANISHED":
        earlier = isinstance(toks[1], list)
        return (head, earlier, seqset(toks[-1]))
    if head == b"QUOTAROOT":
        return (head, toks[1], len(toks) - 2)  # root names are configuration
    if head == b"QUOTA":
        res = toks[2] if len(toks) > 2 and isinstance(toks[2], list) else []
        return (head, [r.upper() for r in res[::3]])  # resource names; usage and limits are configuration
    return tuple(toks)


def _without_redundant_fetches(untagged: list[bytes]) -> list[bytes]:
    """Drop a pushed `* n FETCH (FLAGS ...)` for a message the same answer then expunges.

    Announcing the \\Deleted flag before the EXPUNGE is allowed, and so is only the EXPUNGE.
    """
    out = []
    for i, r in enumerate(untagged):
        m = re.match(rb"\* (\d+) FETCH \((?:FLAGS \([^)]*\)|MODSEQ \(\d+\)| |UID \d+)+\)$", r)
        if m:
            cur = int(m.group(1))
            for later in untagged[i + 1 :]:
                e = re.match(rb"\* (\d+) EXPUNGE$", later)
                if e and int(e.group(1)) == cur:
                    break
                if e and int(e.group(1)) < cur:
                    cur -= 1
            else:
                out.append(r)
            continue
        out.append(r)
    return out


def _expunged(run: list[int]) -> list[int]:
    """Consecutive `* n EXPUNGE` as the sequence numbers they had before the first one.

    "3 2 1" and "1 1 1" remove the same three messages; RFC 3501 §7.4.1 lets the server pick the order.
    """
    alive = list(range(1, max(run) + len(run) + 1))
    gone = []
    for n in run:
        if 0 < n <= len(alive):
            gone.append(alive.pop(n - 1))
    return sorted(gone)


def normalize_strict(untagged: list[bytes], tagged: bytes, today: bytes = b"", command: bytes = b"",
                     preauth: bool = False) -> tuple[Any, ...]:
    """The comparable form of one command's answer (see the comment above); TAGGED without the tag.

    FLAGS and PERMANENTFLAGS are compared in the answer to SELECT/EXAMINE (where RFC 3501 §6.3.1
    requires them); elsewhere a server may send them whenever its keyword list grows.
    """
    status, _, text = tagged.partition(b" ")
    cmd = command.upper()
    verb = cmd.split(b" ", 1)[0]
    selecting = verb in (b"SELECT", b"EXAMINE")
    # RFC 7162 §3.1: a server may leave HIGHESTMODSEQ out of SELECT until the client uses CONDSTORE
    # (Dovecot does); it is compared where the SELECT itself asks for it.
    modseq_free = selecting and b"CONDSTORE" not in cmd and b"QRESYNC" not in cmd
    # RFC 5258 §4: an extended LIST returns child information only when asked (RETURN (CHILDREN)).
    children_free = verb == b"LIST" and (b"RETURN" in cmd or cmd[4:].lstrip().startswith(b"(")) \
        and b"CHILDREN" not in cmd
    untagged = _without_redundant_fetches(untagged)
    segments: list[list[Any]] = [[]]
    for r in untagged:
        if not r.startswith(b"* "):
            segments[-1].append((b"RAW", r[:40]))
            continue
        first = r[2:].split(b" ", 1)[0].upper()
        if first in (b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH"):
            code = _strict_code(r[2 + len(first) + 1 :], preauth)
            if not selecting and code and code[0] == b"PERMANENTFLAGS":
                continue
            if modseq_free and code and code[0] == b"HIGHESTMODSEQ":
                continue
            if code is not None or first != b"OK":  # an OK without a code is free text ("Still here")
                segments[-1].append((first, code))
            continue
        norm = _strict_untagged(tokenize(r[2:]), today, preauth)
        if norm == (b"ENABLED", []):
            continue  # RFC 5161: nothing newly enabled; a server may say so or stay silent
        if children_free and norm[0] == b"LIST":
            norm = (norm[0], [a for a in norm[1] if a not in (b"\\haschildren", b"\\hasnochildren")], *norm[2:])
        if not selecting and (norm[0] == b"FLAGS" or (len(norm) > 1 and norm[1] == b"RECENT")):
            continue  # FLAGS and RECENT updates outside SELECT: the server may send them or not
        if len(norm) > 1 and norm[1] == b"EXPUNGE" and segments[-1] == [] and len(segments) > 1 \
                and segments[-2] and segments[-2][0][0] == b"EXPUNGED":
            segments[-2][0][1].append(int(norm[0]))  # a run of EXPUNGEs: see _expunged
            continue
        if len(norm) > 1 and norm[1] == b"EXPUNGE":
            norm = (b"EXPUNGED", [int(norm[0])])
        if norm[0] in (b"EXISTS", b"EXPUNGED", b"VANISHED") or (len(norm) > 1 and norm[1] == b"EXISTS"):
            # Sequence numbers change here: what comes before and after must not be reordered.
            segments.append([norm])
            segments.append([])
        else:
            segments[-1].append(norm)
    for seg in segments:
        if seg and seg[0][0] == b"EXPUNGED":
            seg[0] = (b"EXPUNGED", _expunged(seg[0][1]))
    body = [item for seg in segments for item in sorted(seg, key=repr)]
    return (status.upper(), _strict_code(text, preauth), body)
