"""Next hops for a domain from DNS (relay.outside = "mx"), with dnspython.

RFC 5321 5.1: MX records by preference; no MX but an address record means the
domain itself is the implicit MX. RFC 7505: a null MX ("." at preference 0)
means the domain accepts no mail (permanent). NXDOMAIN is permanent; timeouts
and server failures are temporary.
"""

from __future__ import annotations

import dns.asyncresolver
import dns.exception
import dns.resolver

from appliance.delivery.routing import Hop


class MxError(Exception):
    def __init__(self, permanent: bool, enhanced: str, text: str) -> None:
        super().__init__(text)
        self.permanent, self.enhanced, self.text = permanent, enhanced, text


async def mx_hops(domain: str, resolver: dns.asyncresolver.Resolver | None = None, port: int = 25) -> tuple[Hop, ...]:
    res = resolver or dns.asyncresolver.get_default_resolver()
    try:
        answer = await res.resolve(domain, "MX")
    except dns.resolver.NXDOMAIN:
        raise MxError(True, "5.1.2", f"domain {domain} does not exist") from None
    except dns.resolver.NoAnswer:
        try:
            await res.resolve(domain, "A")
        except dns.resolver.NoAnswer:
            try:
                await res.resolve(domain, "AAAA")
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                raise MxError(True, "5.1.2", f"domain {domain} has no MX and no address record") from None
        except dns.exception.DNSException as exc:
            raise MxError(False, "4.4.3", f"DNS lookup for {domain} failed: {exc}") from None
        implicit = await _addresses(res, domain, port)  # RFC 5321 5.1: the domain is its own MX
        if not implicit:
            raise MxError(False, "4.4.3", f"no address for {domain}") from None
        return tuple(implicit)
    except dns.exception.DNSException as exc:
        raise MxError(False, "4.4.3", f"DNS lookup for {domain} failed: {exc}") from None
    records = sorted(answer, key=lambda r: r.preference)
    hosts = [r.exchange.to_text(omit_final_dot=True) for r in records]
    if len(records) == 1 and hosts[0] in ("", "."):
        raise MxError(True, "5.1.10", f"domain {domain} accepts no mail (null MX)")
    hops: list[Hop] = []
    for h in hosts:
        if h not in ("", "."):
            hops += await _addresses(res, h, port)
    if not hops:
        raise MxError(False, "4.4.3", f"no address for any MX host of {domain}")
    return tuple(hops)


async def _addresses(res: dns.asyncresolver.Resolver, host: str, port: int) -> list[Hop]:
    """The host's addresses through the same resolver (IPv4 first); none on any DNS error."""
    out: list[Hop] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = await res.resolve(host, rdtype)
        except dns.exception.DNSException:
            continue
        out += [Hop(host, port, address=r.to_text()) for r in answer]
    return out
