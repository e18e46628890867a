"""A tiny authoritative DNS server (Twisted Names) for the consortium's namespaces.

Why it exists: isp-a sponsors the edge box colo. The registry lists colo.test
under isp-a, so other members hand colo.test's mail to isp-a; isp-a accepts it
(`relay.relay_domains`) and, having no member route for its own sponsored
domain, delivers it by `relay.outside = "mx"`: an MX lookup. This server answers
that lookup inside the test network only (isp-a's namespace gets a resolv.conf
pointing here via /etc/netns/NS/resolv.conf). It runs in the registry namespace:

    python -m tests.consortium.dnszone --listen ADDR --mx colo.test=mx.colo.test=10.x.y.30
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import reactor
from twisted.names import authority, common, dns, server


class MemoryAuthority(authority.FileAuthority):
    """An authority whose records come from a dict instead of a zone file."""

    def __init__(self, origin: bytes, records: dict[bytes, list[object]]) -> None:
        common.ResolverBase.__init__(self)
        soa = dns.Record_SOA(mname=b"ns." + origin, rname=b"hostmaster." + origin, serial=1, refresh=60,
                             retry=60, expire=600, minimum=60, ttl=60)
        self.soa = (origin, soa)
        self.records = {k.lower(): v for k, v in records.items()}
        self.records.setdefault(origin, []).insert(0, soa)
        self._cache: dict[object, object] = {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dnszone")
    p.add_argument("--listen", required=True)
    p.add_argument("--port", type=int, default=53)
    p.add_argument("--mx", action="append", required=True, metavar="DOMAIN=MXHOST=ADDRESS")
    a = p.parse_args(argv)
    authorities = []
    for spec in a.mx:
        domain, mxhost, address = (x.encode() for x in spec.split("="))
        records: dict[bytes, list[object]] = {
            domain: [dns.Record_MX(10, mxhost, ttl=60)],
            mxhost: [dns.Record_A(address.decode(), ttl=60)],
        }
        authorities.append(MemoryAuthority(domain, records))
    factory = server.DNSServerFactory(authorities=authorities)
    reactor.listenUDP(a.port, dns.DNSDatagramProtocol(controller=factory), interface=a.listen)  # type: ignore[attr-defined]
    reactor.listenTCP(a.port, factory, interface=a.listen)  # type: ignore[attr-defined]
    print(f"dns on {a.listen}:{a.port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
