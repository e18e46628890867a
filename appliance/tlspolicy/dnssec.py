"""DNS lookups whose answers say whether DNSSEC authenticated them.

The box's own unbound validates; we ask it with the AD bit set (RFC 6840 5.7: a stub
may set AD in a query to ask for the AD bit in the answer) and EDNS DO, and trust the
AD bit of its answer (RFC 4035 3.2.3) because it is our resolver on loopback. A
SERVFAIL (which is what a validating resolver answers for bogus data) or a timeout is a
lookup failure, never "no record".
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.resolver

from appliance.config import ResolverConfig


class LookupFailed(Exception):
    """SERVFAIL, timeout or another error: the answer is unknown (maybe bogus)."""


@dataclass(frozen=True)
class Lookup:
    records: tuple[object, ...]  # rdata objects; empty: the name or type does not exist
    secure: bool  # AD bit: the answer (or the denial of existence) was DNSSEC-validated
    nxdomain: bool = False


def validating_resolver(rc: ResolverConfig) -> dns.asyncresolver.Resolver:
    res = dns.asyncresolver.Resolver(configure=not rc.nameservers)
    if rc.nameservers:
        res.nameservers = list(rc.nameservers)
        res.port = rc.port
    res.timeout = res.lifetime = rc.timeout
    prepare(res)
    return res


def prepare(res: dns.asyncresolver.Resolver) -> None:
    """Ask for the AD bit (and DNSSEC records, so a validating resolver reports on them)."""
    res.flags = dns.flags.RD | dns.flags.AD
    res.use_edns(0, dns.flags.DO, 1232)


async def lookup(res: dns.asyncresolver.Resolver, name: str, rdtype: str) -> Lookup:
    try:
        answer = await res.resolve(name, rdtype, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN as exc:
        responses = list(exc.responses().values())
        secure = bool(responses) and all(r.flags & dns.flags.AD for r in responses)
        return Lookup((), secure, nxdomain=True)
    except (dns.exception.DNSException, OSError) as exc:
        raise LookupFailed(f"{rdtype} lookup for {name} failed: {exc}") from None
    secure = bool(answer.response.flags & dns.flags.AD)
    return Lookup(tuple(answer.rrset) if answer.rrset is not None else (), secure)


def txt_strings(records: tuple[object, ...]) -> list[str]:
    """Each TXT record's character-strings joined (RFC 7208 3.3 style), decoded leniently."""
    out = []
    for r in records:
        strings = getattr(r, "strings", ())
        out.append(b"".join(strings).decode("utf-8", errors="replace"))
    return out


