"""DNS for verifying mail from outside the consortium: one dnspython resolver, as configured.

``relay.resolver`` names the nameservers (address and port) explicitly, so a test points
the relay at its own authoritative server and a box at its own validating resolver.
Every library that evaluates a record (pyspf, dkimpy, authheaders) is given these
lookups instead of its own module-level resolver, through the hook each one offers:
pyspf's ``DNSLookup``, dkimpy's and authheaders' ``dnsfunc``.

``InboundCheck`` is the base of the checks that verify an outsider's message with these
lookups (SPF, DKIM, ARC, DMARC): one resolver per configuration, and one result per
message kept in ``session.notes`` under the check's name.

A temporary failure (timeout, SERVFAIL, no nameserver answering) raises ``DnsTempError``
out of every library, so a check can tell "the record says no" from "we could not ask"
and answer ``451 4.4.3`` (RFC 7208 8.6, RFC 6376 6.1.2, RFC 7489 6.6.3) for the latter.
dkimpy turns its own timeout into a plain verification failure, which is why its
``dnsfunc`` here raises this exception, not dkimpy's.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from appliance.policy.check import Check

if TYPE_CHECKING:
    from appliance.config import ResolverConfig
    from appliance.message import Message
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Session

CACHE_ENTRIES = 10_000  # answers kept (dnspython honours each answer's TTL)
MAX_TXT = 10  # TXT records of one name looked at (a name with more is not a policy record)


class DnsTempError(Exception):
    """A lookup that could not be answered now (not "no such record")."""


class InboundDns:
    def __init__(self, cfg: ResolverConfig) -> None:
        self.cfg = cfg
        self.timeout = cfg.timeout
        self._resolver: dns.resolver.Resolver | None = None
        self._lock = threading.Lock()

    @property
    def resolver(self) -> dns.resolver.Resolver:
        """Built at the first lookup: a box with relay.outsiders = "refuse" never reads /etc/resolv.conf."""
        with self._lock:
            if self._resolver is None:
                cfg = self.cfg
                try:
                    resolver = dns.resolver.Resolver(configure=not cfg.nameservers)
                except dns.resolver.NoResolverConfiguration as exc:
                    raise DnsTempError(f"no resolver: relay.resolver.nameservers is empty and {exc}") from None
                if cfg.nameservers:
                    resolver.nameservers = list(cfg.nameservers)
                resolver.port = cfg.port
                resolver.timeout = cfg.timeout
                resolver.lifetime = cfg.timeout
                resolver.cache = dns.resolver.LRUCache(CACHE_ENTRIES)
                self._resolver = resolver
            return self._resolver

    def answers(self, name: str | bytes, rdtype: str) -> list[Any]:
        """The records of NAME (empty for NXDOMAIN or no data); ``DnsTempError`` if DNS cannot answer now."""
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        try:
            answer = self.resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout) as exc:
            raise DnsTempError(f"{name} {rdtype}: {exc.__class__.__name__}") from None
        except (dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.EmptyLabel):
            return []  # a name that cannot exist has no records
        return list(answer.rrset or [])

    def txt(self, name: str | bytes) -> list[str]:
        """Each TXT record of NAME as one string (its character-strings joined, RFC 7208 3.3)."""
        out = []
        for r in self.answers(name, "TXT")[:MAX_TXT]:
            out.append(b"".join(r.strings).decode("utf-8", "replace"))
        return out

    # --- the hooks the libraries take ---------------------------------------------------------

    def dkim_txt(self, name: bytes | str, timeout: float = 5) -> str | None:
        """dkimpy's ``dnsfunc``: the first TXT record of NAME, or None."""
        records = self.txt(name)
        return records[0] if records else None

    def dmarc_txt(self, name: str) -> str | None:
        """authheaders' ``dnsfunc`` for DMARC (it expects the record text without quotes, or None).

        Only a ``v=DMARC1`` record is returned: RFC 7489 6.6.3 says other TXT records at
        ``_dmarc`` are ignored, and more than one DMARC record means none.
        """
        records = [r for r in self.txt(name) if r.startswith("v=DMARC1")]
        return records[0] if len(records) == 1 else None

    def dnsbl_listed(self, ip: str, zone: str) -> bool:
        """Is IP listed in the DNS block list ZONE (an A record under its reversed address)?"""
        addr = ipaddress.ip_address(ip)
        labels = addr.reverse_pointer.rsplit(".", 2)[0]  # strip in-addr.arpa / ip6.arpa
        return any(str(r.address).startswith("127.") for r in self.answers(f"{labels}.{zone}", "A"))


# pyspf looks up records through its module-level ``DNSLookup``; the relay's resolver is given
# to it per thread, so concurrent checks (and tests with several configurations) never mix.
_current = threading.local()


def spf_lookup(name: str, qtype: str, *args: Any, **kwargs: Any) -> list[tuple[tuple[str, str], Any]]:
    """pyspf's ``DNSLookup`` with the resolver of ``with_spf_resolver`` (the shapes are pyspf's dnspython ones)."""
    import spf

    dnsx: InboundDns | None = getattr(_current, "dns", None)
    if dnsx is None:
        raise spf.TempError("DNS: no resolver configured for this thread")
    qtype = qtype.upper()
    try:
        records = dnsx.answers(name, qtype)
    except DnsTempError as exc:
        raise spf.TempError(f"DNS {exc}") from None
    out: list[tuple[tuple[str, str], Any]] = []
    for r in records:
        if qtype in ("A", "AAAA"):
            out.append(((name, qtype), r.address))
        elif qtype == "MX":
            out.append(((name, qtype), (r.preference, r.exchange)))
        elif qtype == "PTR":
            out.append(((name, qtype), r.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            out.append(((name, qtype), r.strings))
    return out


@contextlib.contextmanager
def with_spf_resolver(dnsx: InboundDns) -> Iterator[None]:
    """pyspf's lookups in this thread go to DNSX while inside."""
    import spf

    spf.DNSLookup = spf_lookup  # idempotent: always this function
    _current.dns = dnsx
    try:
        yield
    finally:
        _current.dns = None


_shared: dict[int, tuple[object, InboundDns]] = {}
_lock = threading.Lock()


def for_config(cfg: Any) -> InboundDns:
    """The one resolver (and its cache) of a Config object, shared by every check of the relay."""
    with _lock:
        hit = _shared.get(id(cfg))
        if hit is not None and hit[0] is cfg:
            return hit[1]
        dnsx = InboundDns(cfg.relay.resolver)
        _shared[id(cfg)] = (cfg, dnsx)
        return dnsx


# --- the checks that use it ---------------------------------------------------------------------

class InboundCheck(Check):
    """A check of an outsider's message that needs DNS: ``verify`` runs in the pipeline's worker thread.

    Its result is kept in ``session.notes`` under the check's name, where the check's own
    ``on_data`` and the checks after it (DMARC reads SPF, DKIM and ARC) find it with ``noted``.
    """

    def __init__(self, ctx: PolicyContext) -> None:
        self.dns = for_config(ctx.cfg)

    def prepare_data(self, session: Session, message: Message) -> None:
        # The previous transaction's result goes first: if verify raises, nothing stale is judged.
        session.notes.pop(self.name, None)
        session.notes[self.name] = self.verify(session, message)

    def verify(self, session: Session, message: Message) -> object:
        """The result for this message (may block on DNS, bounded by relay.resolver.timeout)."""
        raise NotImplementedError


_Result = TypeVar("_Result")


def noted(session: Session, name: str, kind: type[_Result]) -> _Result | None:
    """The result check NAME kept for this message, or None (it did not run, or failed unexpectedly)."""
    found = session.notes.get(name)
    return found if isinstance(found, kind) else None


def quiet_dkimpy_log(name: str) -> logging.Logger:
    """A logger for dkimpy, silenced: it logs every failed signature at ERROR, and those are
    results this box reports (Authentication-Results), not errors."""
    log = logging.getLogger(name)
    log.setLevel(logging.CRITICAL)
    return log
