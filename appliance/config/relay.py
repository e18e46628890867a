"""`[relay]` and its tables: sizes, routes, upstream, resolvers, inbound verification, outbound TLS."""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from appliance.config.base import Model, Port, check_domain, ip_list


class UpstreamConfig(Model):
    """The member relay an edge box sends everything through."""

    host: str = Field(description="Upstream relay host name or address.")
    port: Port = Field(587, description="Upstream submission port (STARTTLS).")
    username: str = Field(description="Account on the upstream relay.")
    password_file: str = Field(description="File holding the upstream password (mode 0600).")
    spki_sha256: list[str] = Field(
        default_factory=list, description="Pinned SPKI SHA-256 (hex) of the upstream's certificate; empty: CA-verified."
    )
    ca_file: str = Field("", description="CA bundle to verify the upstream with (empty: system CAs).")


class RelayRoute(Model):
    """The next hop of a domain this box relays for (a sponsored edge box): SMTP, TLS required by default."""

    host: str = Field(description="Next hop host name or IP address (also the name its certificate is checked against).")
    port: Port = Field(25, description="Next hop SMTP port.")
    tls: Literal["required", "opportunistic"] = Field(
        "required",
        description="`required`: STARTTLS or nothing, verified by `spki_sha256` pins or else against `relay.ca_file`; "
        "`opportunistic`: STARTTLS when offered, unverified, plaintext otherwise (only for a hop you trust the path to).",
    )
    spki_sha256: list[str] = Field(
        default_factory=list, description="Pinned SPKI SHA-256 (64 hex digits) of the next hop's key; empty: CA-verified."
    )

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            return check_domain(v)

    @field_validator("spki_sha256")
    @classmethod
    def _pins(cls, v: list[str], info: ValidationInfo) -> list[str]:
        out = [p.strip().lower() for p in v]
        for p in out:
            if len(p) != 64 or any(c not in "0123456789abcdef" for c in p):
                raise ValueError(f"{p!r} is not a SHA-256 in hex (64 digits)")
        if out and info.data.get("tls") != "required":
            raise ValueError("pins need tls = 'required' (opportunistic TLS may end up in plaintext)")
        return out


class ResolverConfig(Model):
    """The DNS resolver the relay asks for SPF, DKIM, DMARC, ARC and DNSBL records (relay.outsiders = "verify")."""

    nameservers: list[str] = Field(
        default_factory=list,
        description="Resolver addresses (IPv4 or IPv6) asked in order; empty: those in /etc/resolv.conf.",
    )
    port: Port = Field(53, description="UDP/TCP port of `relay.resolver.nameservers`.")
    timeout: float = Field(
        5.0, gt=0, le=60,
        description="Seconds one lookup may take before it counts as a temporary DNS failure (`451 4.4.3`).",
    )

    @field_validator("nameservers")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        return ip_list(v)


class VerifyConfig(Model):
    """How port 25 verifies mail from outside the consortium (docs/internet.md)."""

    authserv_id: str = Field(
        "", description="The authserv-id of this box's Authentication-Results headers (RFC 8601 2.5); "
        "empty: box.hostname."
    )
    dnsbl_zones: list[str] = Field(
        default_factory=list,
        description="DNS block lists asked for each outside client's address (e.g. `zen.spamhaus.org`); "
        "a listed client is refused with `554 5.7.1`. Empty: none asked.",
    )
    arc_trusted_sealers: list[str] = Field(
        default_factory=list,
        description="Domains (ARC-Seal d=) whose valid ARC chain (RFC 8617) overrides a DMARC failure: "
        "forwarders and lists you trust to have verified the original. Empty: ARC is reported, never trusted.",
    )

    @field_validator("authserv_id")
    @classmethod
    def _authserv(cls, v: str) -> str:
        return check_domain(v) if v else v

    @field_validator("dnsbl_zones", "arc_trusted_sealers")
    @classmethod
    def _zones(cls, v: list[str]) -> list[str]:
        return [check_domain(d) for d in v]


class OutboundResolverConfig(ResolverConfig):
    """The DNSSEC-validating resolver of outbound mail: MX, TLSA (DANE needs its AD bit), MTA-STS and TLS-RPT records."""

    nameservers: list[str] = Field(
        default_factory=lambda: ["127.0.0.1"],
        description="Resolver addresses asked in order (default: the box's own unbound, states/appliance/unbound.sls); "
        "empty: those in /etc/resolv.conf.",
    )


class OutboundConfig(Model):
    """Outbound TLS to the Internet (`relay.outside = "mx"`): MTA-STS, DANE, TLS-RPT (docs/internet.md)."""

    dane: bool = Field(True, description="Honour DANE TLSA records (RFC 7672) of MX hosts, from `resolver`.")
    mta_sts: bool = Field(True, description="Fetch, cache and honour MTA-STS policies (RFC 8461).")
    resolver: OutboundResolverConfig = Field(
        default_factory=OutboundResolverConfig,
        description="The DNSSEC-validating resolver asked for MX, TLSA, MTA-STS and TLS-RPT records.",
    )
    ca_file: str = Field(
        "", description="CA bundle for MTA-STS: the policy's HTTPS server and the MX certificates "
        "(empty: system CAs).",
    )
    tlsrpt: bool = Field(True, description="Count TLS results per policy domain for TLS-RPT reports (RFC 8460).")


class RelayConfig(Model):
    """The SMTP relay: sizes, routing, retries."""

    max_message_size: int = Field(26_214_400, gt=0, description="Largest message accepted, in bytes (advertised as SIZE).")
    max_recipients: int = Field(100, gt=0, description="Recipients in one message before `452 4.5.3`.")
    outside: Literal["refuse", "mx"] = Field(
        "refuse",
        description="Mail for a domain that is neither local nor a member's: `refuse` (bounce 5.7.1) or `mx` (DNS MX).",
    )
    outsiders: Literal["refuse", "verify"] | None = Field(
        None,
        description="What port 25 does with a client that is not an active member's relay: `refuse` (`554 5.7.1` "
        "at the greeting) or `verify` (mail for local domains only, checked with SPF, DKIM, DMARC and ARC, "
        "docs/internet.md). Unset: `refuse` for box.role `member`, `verify` for `edge`.",
    )
    resolver: ResolverConfig = Field(default_factory=ResolverConfig, description="DNS resolver for `verify`.")
    verify: VerifyConfig = Field(default_factory=VerifyConfig, description="Settings of `outsiders = \"verify\"`.")
    outbound: OutboundConfig = Field(default_factory=OutboundConfig,
                                     description="TLS policy of `outside = \"mx\"` (MTA-STS, DANE, TLS-RPT).")
    relay_domains: list[str] = Field(
        default_factory=list,
        description="Domains this box accepts on port 25 and relays onward (e.g. sponsored edge boxes); "
        "each needs its next hop in `relay.relay_routes`.",
    )
    relay_routes: dict[str, RelayRoute] = Field(
        default_factory=dict,
        description="Next hop of each `relay.relay_domains` domain, by domain: "
        "`[relay.relay_routes.\"colo.test\"]` (keys: `[relay.relay_routes.DOMAIN]` below). "
        "Checked before the registry's member domains.",
    )
    internal_allowed_uids: list[int] = Field(
        default_factory=list,
        description="Unix uids allowed to connect to the internal submission socket (SO_PEERCRED); "
        "empty means the relay's own uid.",
    )
    retry_initial: int = Field(300, gt=0, description="First retry delay in seconds; doubles each attempt.")
    retry_max: int = Field(3600, gt=0, description="Longest retry delay in seconds.")
    max_lifetime: int = Field(432_000, gt=0, description="Seconds before an undeliverable message is bounced (5 days).")
    delay_warning: int = Field(0, ge=0, description="Seconds after which a delay DSN is sent once; 0 disables it.")
    destination_concurrency: int = Field(10, gt=0, description="Parallel deliveries to one destination.")
    delivery_workers: int = Field(20, gt=0, description=(
        "Parallel deliveries in total: remote attempts at once, and the number of local delivery "
        "threads (each may hold an accounts connection, PostgreSQL included)."))
    upstream: UpstreamConfig | None = Field(None, description="Required when box.role is `edge`.")
    ca_file: str = Field(
        "",
        description="CA bundle used to verify member relays whose registry entry lists no SPKI pins, and relay routes "
        "without pins (empty: system CAs).",
    )

    @field_validator("relay_domains")
    @classmethod
    def _relay_domains(cls, v: list[str]) -> list[str]:
        return [check_domain(d) for d in v]

    @field_validator("relay_routes", mode="before")
    @classmethod
    def _route_keys(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out = {}
        for k, r in v.items():
            try:
                out[check_domain(str(k))] = r
            except ValueError as exc:
                raise ValueError(f"{k!r}: {exc}") from None
        return out
