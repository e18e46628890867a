"""ENVELOPE (RFC 9051 §7.5.2, RFC 3501 §7.4.2) and RFC 5322 address lists.

Address lists are parsed with RFC 5322 §3.4 group syntax: a group is sent as a start
marker ``(NIL NIL "name" NIL)``, its members, and an end marker ``(NIL NIL NIL NIL)``
(RFC 9051 §7.5.2 "group syntax"). Where the RFC leaves room, the output is Dovecot's
(``message-address.c``, ``imap-envelope.c``), the reference server of the differential:

- an addr-spec's trailing comment is the display name (``a@b (Ann)``);
- a missing local part or domain is filled with ``MISSING_MAILBOX`` / ``MISSING_DOMAIN``
  (never NIL: a NIL host would read as a group marker, RFC 9051 §7.5.2);
- every empty list element (``a@b, ,c@d``) gives one such filled address;
- encoded words (RFC 2047) are sent as they are, undecoded; 8-bit bytes go in literals;
- the last Date/Subject/Message-ID/In-Reply-To field wins, address fields accumulate;
- Sender and Reply-To, when absent or empty, are the From list (RFC 9051 §7.5.2 "the
  server sets the corresponding member of the envelope to be the same value as the from member").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.access.imapmsg import mimetree, rfc822
from services.access.imapmsg.quote import humans, nstring, nstring_nolf

MISSING_MAILBOX = "MISSING_MAILBOX"
MISSING_DOMAIN = "MISSING_DOMAIN"


@dataclass
class Address:
    """One ENVELOPE address. A group start has mailbox=name, domain=None; a group end is all None."""

    name: str | None = None
    route: str | None = None
    mailbox: str | None = None
    domain: str | None = None
    group: bool = False  # a group start or end marker

    @property
    def is_group_end(self) -> bool:
        return self.group and self.mailbox is None


class _AddressParser:
    def __init__(self, value: bytes) -> None:
        self.p = rfc822.Parser(value)
        self.out: list[Address] = []
        self.cur = Address()

    def _add(self) -> None:
        self.out.append(self.cur)
        self.cur = Address()

    def _fill_and_add(self) -> None:
        a = self.cur
        if not a.mailbox:
            a.mailbox = MISSING_MAILBOX
        if not a.domain:
            a.domain = MISSING_DOMAIN
        self._add()

    # RFC 5322 §3.4: address-list = (address *("," address)) / obs-addr-list
    def address_list(self) -> list[Address]:
        p = self.p
        if not p.skip_cfws():
            return []
        while True:
            ret = self._address()
            if ret == 0 or p.at_end() or p.peek() != ord(","):
                break
            p.pos += 1
            if not p.skip_cfws():
                break
        return self.out

    def _address(self) -> int:
        start = self.p.pos
        ret = self._group()
        if ret < 0:
            self.p.pos = start
            self.cur = Address()
            ret = self._mailbox()
        return ret

    def _group(self) -> int:
        """group = display-name ":" [group-list] ";" [CFWS]"""
        p = self.p
        name = p.phrase()
        if name is None or p.peek() != ord(":"):
            return -1
        p.pos += 1
        ok = p.skip_cfws()
        self.cur = Address(mailbox=name, group=True)
        self._add()
        ret = 1 if ok else 0
        if ok and p.peek() != ord(";"):
            while True:
                if self._mailbox() <= 0:
                    ret = -1
                    break
                if p.at_end() or p.peek() != ord(","):
                    break
                p.pos += 1
                if not p.skip_cfws():
                    ret = -1
                    break
        if ret >= 0:
            if p.at_end() or p.peek() != ord(";"):
                ret = -1
            else:
                p.pos += 1
                ret = 1 if p.skip_cfws() else 0
        self.cur = Address(group=True)
        self._add()
        return 0 if ret == 0 else 1

    def _mailbox(self) -> int:
        """mailbox = name-addr / addr-spec"""
        p = self.p
        start = p.pos
        self.cur = Address()
        ret = self._name_addr()
        if ret < 0:
            p.pos = start
            self.cur = Address()
            ret = self._addr_spec()
        self._fill_and_add()
        return ret

    def _name_addr(self) -> int:
        p = self.p
        if p.peek() == ord("<"):
            name = None
        else:
            name = p.phrase()
            if name is None or p.peek() != ord("<"):
                return -1
        self.cur.name = name or None
        return self._angle_addr()

    def _angle_addr(self) -> int:
        """angle-addr = "<" [obs-route] addr-spec ">" (RFC 5322 §3.4, §4.4)"""
        p = self.p
        p.pos += 1
        if not p.skip_cfws():
            return -1
        if p.peek() == ord("@"):
            route = self._domain_list()
            if route is not None and p.peek() == ord(":"):
                p.pos += 1
                self.cur.route = route
            elif p.at_end():
                return -1
            if not p.skip_cfws():
                return -1
        if p.peek() != ord(">"):
            if self._local_part() is None:
                return -1
            if p.peek() == ord("@"):
                p.pos += 1
                dom = p.domain()
                if dom is None:
                    return -1
                self.cur.domain = dom
        if p.peek() != ord(">"):
            return -1
        p.pos += 1
        return 1 if p.skip_cfws() else 0

    def _domain_list(self) -> str | None:
        """obs-domain-list = "@" domain *(*(CFWS / ",") [CFWS] "@" domain)"""
        p = self.p
        route: list[str] = []
        while p.peek() == ord("@"):
            p.pos += 1
            dom = p.domain()
            if dom is None:
                return None
            route.append("@" + dom)
            while p.skip_cfws() and p.peek() == ord(","):
                p.pos += 1
        return ",".join(route)

    def _local_part(self) -> str | None:
        p = self.p
        if p.peek() == ord('"'):
            lp = p.quoted_string()
        else:
            lp = p.dot_atom()
        if lp is not None:
            self.cur.mailbox = lp
        return lp

    def _addr_spec(self) -> int:
        """addr-spec = local-part "@" domain; a lone word is a mailbox, more words a display name."""
        p = self.p
        p.last_comment = b""
        quoted = p.peek() == ord('"')
        lp = self._local_part()
        ret = -1 if lp is None else (0 if p.at_end() else 1)
        had_domain = False
        if ret != 0 and p.peek() == ord("@"):
            had_domain = True
            p.pos += 1
            dom = p.domain()
            if dom is None:
                ret = -1
            else:
                self.cur.domain = dom
                ret = 0 if p.at_end() else 1
        if p.last_comment:
            self.cur.name = rfc822.text(p.last_comment)
        elif not had_domain:
            more = p.phrase()
            if more:
                self.cur.name = f"{lp or ''} {more}".strip()
                self.cur.mailbox = None
            elif not quoted:
                self.cur.domain = ""
            ret = -1
        return ret


# The common shapes, ``Name Words <local@domain>`` and ``local@domain`` in US-ASCII with single
# spaces and no comments, quotes or groups, parse to what the full parser gives without its
# byte-by-byte walk (about half the cost of a first ENVELOPE, issue 13). Anything else, and any
# list with one element not of these shapes, goes to the full parser.
_AT = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"  # RFC 5322 §3.2.3 atext (ASCII)
_DOT_ATOM = rb"%s+(?:\.%s+)*" % (_AT, _AT)
_PLAIN = re.compile(rb"(?:(?P<name>[A-Za-z0-9!#$%%&'*+/=?^_`{|}~.-]+(?: [A-Za-z0-9!#$%%&'*+/=?^_`{|}~.-]+)*) ?)?"
                    rb"<(?P<lp>%s)@(?P<dom>%s)>|(?P<blp>%s)@(?P<bdom>%s)" % ((_DOT_ATOM,) * 4))
_NOT_PLAIN = frozenset(b'"()\\:;[]')


def _plain_addresses(value: bytes) -> list[Address] | None:
    """The fast path: the addresses of VALUE if every element is a plain one, else None."""
    if not value or not value.isascii() or any(c in _NOT_PLAIN for c in value):
        return None
    out: list[Address] = []
    for item in value.split(b","):
        m = _PLAIN.fullmatch(item.strip(b" \t\r\n"))
        if m is None:
            return None
        if m.group("lp") is not None:
            name = m.group("name")
            out.append(Address(name=name.decode() if name else None, mailbox=m.group("lp").decode(),
                               domain=m.group("dom").decode()))
        else:
            out.append(Address(mailbox=m.group("blp").decode(), domain=m.group("bdom").decode()))
    return out


def parse_addresses(value: bytes) -> list[Address]:
    plain = _plain_addresses(value)
    return plain if plain is not None else parse_addresses_full(value)


def parse_addresses_full(value: bytes) -> list[Address]:
    """The RFC 5322 §3.4 parser for any input (Dovecot's rules); ``parse_addresses`` tries the fast path first."""
    return _AddressParser(value).address_list()


def write_addresses(addrs: list[Address] | None) -> bytes:
    if not addrs:
        return b"NIL"
    out = [b"("]
    for a in addrs:
        out.append(b"(" + humans(a.name) + b" " + nstring(a.route) + b" " + nstring(a.mailbox) + b" "
                   + nstring(a.domain) + b")")
    out.append(b")")
    return b"".join(out)


_ADDRESS_FIELDS = ("from", "sender", "reply-to", "to", "cc", "bcc")


def envelope_of(header: list[mimetree.HeaderField]) -> bytes:
    """The ENVELOPE of the message whose header fields are HEADER."""
    strings: dict[str, bytes | None] = {"date": None, "subject": None, "in-reply-to": None, "message-id": None}
    addrs: dict[str, list[Address] | None] = dict.fromkeys(_ADDRESS_FIELDS)
    for f in header:
        n = f.lname
        if n in strings:
            strings[n] = mimetree.field_value(f)
        elif n in addrs:
            found = parse_addresses(mimetree.field_value(f))
            if found:
                addrs[n] = (addrs[n] or []) + found
    # RFC 9051 §7.5.2: "If the Sender or Reply-To header lines are absent in the [RFC-5322]
    # header, or are present but empty, the server sets the corresponding member of the
    # envelope to be the same value as the from member".
    for n in ("sender", "reply-to"):
        if not addrs[n]:
            addrs[n] = addrs["from"]
    fields = [
        nstring_nolf(strings["date"]),
        humans(strings["subject"]),
        *(write_addresses(addrs[n]) for n in _ADDRESS_FIELDS),
        nstring_nolf(strings["in-reply-to"]),
        nstring_nolf(strings["message-id"]),
    ]
    return b"(" + b" ".join(fields) + b")"


def envelope(data: bytes) -> bytes:
    """The serialized ENVELOPE of message DATA (RFC 9051 §7.5.2)."""
    return envelope_of(mimetree.header_fields(mimetree.crlf(data)))
