"""Where a recipient's mail goes (DESIGN.md "Routing"), decided per recipient.

1. a local domain: the Maildir;
2. a ``relay.relay_routes`` domain (a sponsored edge box): its configured next hop,
   TLS required unless the route says otherwise. Checked before the registry: the
   registry lists a sponsored domain under its sponsor, so a sponsor that looked it
   up there would route it to itself;
3. a domain the registry lists for a member: that member's relay hosts, TLS
   required, SPKI pinned when listed (a suspended member: keep and retry);
4. role ``edge``: the configured upstream relay (checked before the registry: an edge
   box is not a member, so members take its mail only through its upstream);
5. otherwise ``relay.outside``: ``refuse`` (5.7.1) or ``mx`` (DNS MX; DANE, MTA-STS or
   opportunistic TLS per host, decided in appliance/delivery/mx.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from appliance.addresses import domain_of
from appliance.config import Config
from appliance.registry.model import Registry
from appliance.tlspolicy.hoptls import HopTls

Kind = Literal["local", "relay", "member", "upstream", "mx", "refuse", "hold", "home"]  # home: appliance/delivery/homes.py


@dataclass(frozen=True)
class Hop:
    host: str
    port: int
    spki_sha256: tuple[str, ...] = ()
    address: str = ""  # resolved address to connect to (DNS MX); empty: connect to host
    tls: HopTls | None = None  # DNS MX under DANE or MTA-STS (appliance/delivery/mx.py); None: as the policy says


@dataclass(frozen=True)
class Destination:
    """One place mail is handed to; the unit of concurrency caps and outbound pacing."""

    kind: Kind
    key: str  # "local", "relay:DOMAIN", "member:ID", "upstream", "mx:DOMAIN"
    member_id: str = ""
    domain: str = ""


@dataclass(frozen=True)
class Route:
    destination: Destination
    hops: tuple[Hop, ...] = ()
    reason: str = ""  # why refused or held


def route(cfg: Config, registry: Registry | None, recipient: str) -> Route:
    domain = domain_of(recipient)
    if domain in cfg.box.domains:
        return Route(Destination("local", "local", domain=domain))
    next_hop = cfg.relay.relay_routes.get(domain)
    if next_hop is not None:
        return Route(Destination("relay", f"relay:{domain}", domain=domain),
                     (Hop(next_hop.host, next_hop.port, tuple(next_hop.spki_sha256)),))
    if cfg.box.role == "edge" and cfg.relay.upstream is not None:
        # An edge box is not a member: members only take its mail through its upstream.
        up = cfg.relay.upstream
        return Route(Destination("upstream", "upstream", domain=domain), (Hop(up.host, up.port, tuple(up.spki_sha256)),))
    if registry is None:
        # Without a registry we cannot tell a member's domain from an outsider's: wait, never guess.
        return Route(Destination("hold", "hold:registry", domain=domain), reason="consortium registry unavailable")
    member = registry.member_for_domain(domain)
    if member is not None and member.id != cfg.box.member_id:
        dest = Destination("member", f"member:{member.id}", member_id=member.id, domain=domain)
        if not member.active:
            return Route(Destination("hold", f"hold:{member.id}", member_id=member.id, domain=domain),
                         reason=f"member {member.id} is suspended")
        hops = tuple(Hop(r.host, r.port, r.spki_sha256) for r in member.relays)
        if not hops:
            return Route(Destination("hold", f"hold:{member.id}", member_id=member.id, domain=domain),
                         reason=f"member {member.id} lists no relay hosts")
        return Route(dest, hops)
    if cfg.relay.outside == "mx":
        return Route(Destination("mx", f"mx:{domain}", domain=domain))
    return Route(Destination("refuse", "refuse", domain=domain), reason=f"{domain} is not a consortium member's domain")
