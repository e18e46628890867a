"""The box's configuration: one TOML file, validated once into a typed object.

Every key is declared here, with its type, default and description; the
reference in docs/configuration.md is generated from these models
(``python -m appliance.config --docs``) so the two cannot drift.

A bad file is refused before anything listens, with one line naming the file,
the key, the value and the reason (``ConfigError``); the CLI exits 2 on it.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from appliance.fleet_config import FleetBox, FleetConfig

DEFAULT_CONFIG = "/etc/appliance/appliance.toml"
CONFIG_ENV = "APPLIANCE_CONFIG"

Port = Annotated[int, Field(ge=0, le=65535)]
TlsMode = Literal["starttls", "implicit", "none"]


class ConfigError(Exception):
    """A config file that cannot be used; ``str()`` is the one-line message."""


class _Model(BaseModel):
    # Unknown keys are refused (a typo must not be silently ignored) and
    # values are not coerced: "25" is not a port.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _check_domain(value: str) -> str:
    v = value.strip().lower().rstrip(".")
    labels = v.split(".")
    if len(v) > 253 or len(labels) < 2 and v != "localhost":
        raise ValueError("not a fully qualified domain name")
    for label in labels:
        if not label or len(label) > 63 or label.startswith("-") or label.endswith("-"):
            raise ValueError("not a valid domain name")
        if not all(c.isalnum() or c == "-" for c in label):
            raise ValueError("not a valid domain name")
    return v


class BoxConfig(_Model):
    """Who this box is."""

    role: Literal["member", "edge"] = Field(
        "member",
        description="`member`: a consortium ISP that delivers to members directly; "
        "`edge`: a small box that sends everything through an upstream member relay.",
    )
    hostname: str = Field(description="The box's public name: HELO name, TLS certificate name, Received: by.")
    domains: list[str] = Field(description="Local mail domains: mail for these is delivered to this box's Maildirs.")
    member_id: str = Field(
        "",
        description="This box's member id in the consortium registry (empty for an edge box that is not a member).",
    )
    postmaster: str = Field(
        "", description="Address that receives operator notifications (abuse brake, alarms). Default postmaster@first domain."
    )

    service_user: str = Field(
        "", description="Unix user the services run as under supervisor (empty: the user who starts supervisord)."
    )

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str) -> str:
        return _check_domain(v)

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one local domain is required")
        return [_check_domain(d) for d in v]

    @property
    def postmaster_address(self) -> str:
        return self.postmaster or f"postmaster@{self.domains[0]}"


class PathsConfig(_Model):
    """Where the box keeps things (FHS on a box, everything under the dev directory in development)."""

    state_dir: str = Field("/var/lib/appliance", description="Accounts database, limiter state, registry copy.")
    spool_dir: str = Field("/var/spool/appliance", description="The mail queue.")
    mail_dir: str = Field("/var/mail/appliance", description="Maildirs, one per account: MAIL_DIR/DOMAIN/LOCALPART/.")
    run_dir: str = Field("/run/appliance", description="Sockets and pid files (supervisord, internal submission).")
    log_dir: str = Field("/var/log/appliance", description="Service logs written by supervisor.")

    @property
    def accounts_db(self) -> Path:
        return Path(self.state_dir) / "accounts.sqlite3"

    @property
    def internal_socket(self) -> Path:
        return Path(self.run_dir) / "submit.sock"


class TlsConfig(_Model):
    """The certificate every TLS listener presents."""

    cert: str = Field(description="PEM certificate chain (certbot's fullchain.pem on a box).")
    key: str = Field(description="PEM private key.")
    source: Literal["self-signed", "certbot"] = Field(
        "self-signed", description="Where the certificate came from; shown in `appliance status`."
    )


class DkimConfig(_Model):
    """DKIM signing (dkimpy) of mail submitted by customers."""

    selector: str = Field("mail", description="DKIM selector (the DNS record is SELECTOR._domainkey.DOMAIN).")
    key: str = Field(description="PEM RSA private key.")
    domains: list[str] = Field(
        default_factory=list, description="Domains to sign for; empty means all of box.domains."
    )


def ip_list(v: list[str]) -> list[str]:
    """IP address list keys (relay.resolver.nameservers, publish.addresses): each one normalised, the bad one named."""
    out = []
    for a in v:
        try:
            out.append(str(ipaddress.ip_address(a)))
        except ValueError:
            raise ValueError(f"{a!r} is not an IP address") from None
    return out


class Listener(_Model):
    """One listening endpoint."""

    enabled: bool = Field(True, description="Whether to listen at all.")
    host: str = Field("0.0.0.0", description="Address to bind.")
    port: Port = Field(description="TCP port.")
    tls: TlsMode = Field(description="`starttls`, `implicit` or `none`.")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError as exc:
            raise ValueError("must be an IP address") from exc
        return v


class WellKnownListener(Listener):
    """The public HTTPS listener for the well-known names (services/console/wellknown.py, docs/console.md):
    mta-sts.DOMAIN, autoconfig.DOMAIN, autodiscover.DOMAIN and box.hostname. Off until its table is written."""

    host: str = Field("0.0.0.0", description="Address to bind (public: senders and mail clients fetch from outside).")
    port: Port = Field(443, description="TCP port (RFC 8461 3.3 and the mail clients use 443).")
    tls: TlsMode = Field("implicit", description="Must be `implicit` (HTTPS only).")
    max_connections: int = Field(200, ge=1, le=100_000, description="Open connections at most, all clients together.")
    max_per_client: int = Field(8, ge=1, le=10_000,
                                description="Open connections at most per client address (IPv6 counted by /64).")
    connection_lifetime: float = Field(
        30.0, ge=1.0, le=3600.0,
        description="Seconds a connection may live in all, the TLS handshake included; then it is closed.",
    )


class ListenersConfig(_Model):
    """Every endpoint the box serves. The relay owns mx/submission/submissions, the access service the rest."""

    mx: Listener = Field(default_factory=lambda: Listener(port=25, tls="starttls"), description="SMTP from members.")
    submission: Listener = Field(
        default_factory=lambda: Listener(port=587, tls="starttls"), description="Customer submission, AUTH after STARTTLS."
    )
    submissions: Listener = Field(
        default_factory=lambda: Listener(port=465, tls="implicit"), description="Customer submission, implicit TLS."
    )
    imap: Listener = Field(default_factory=lambda: Listener(port=143, tls="starttls"), description="IMAP with STARTTLS.")
    imaps: Listener = Field(default_factory=lambda: Listener(port=993, tls="implicit"), description="IMAP, implicit TLS.")
    pop3: Listener = Field(default_factory=lambda: Listener(port=110, tls="starttls"), description="POP3 with STLS.")
    pop3s: Listener = Field(default_factory=lambda: Listener(port=995, tls="implicit"), description="POP3, implicit TLS.")
    metrics: Listener = Field(
        default_factory=lambda: Listener(host="127.0.0.1", port=9125, tls="none"),
        description="Prometheus metrics of the relay (plain HTTP; keep it on loopback).",
    )
    access_metrics: Listener = Field(
        default_factory=lambda: Listener(host="127.0.0.1", port=9126, tls="none"),
        description="Prometheus metrics of the access service, IMAP and POP (plain HTTP; keep it on loopback).",
    )
    console: Listener = Field(
        default_factory=lambda: Listener(host="127.0.0.1", port=8443, tls="implicit"),
        description="The web console (HTTPS with the box's certificate, docs/console.md): loopback by default, "
        "reached over `ssh -L`; `tls` must be `implicit`.",
    )
    wellknown: WellKnownListener = Field(
        default_factory=lambda: WellKnownListener(enabled=False),
        description="MTA-STS policy, Thunderbird autoconfig and Outlook Autodiscover on the public names over "
        "HTTPS (docs/console.md). Off unless a `[listeners.wellknown]` table is written (then on by default): "
        "its names join the certificate's, and each must resolve to the box first.",
    )


class UpstreamConfig(_Model):
    """The member relay an edge box sends everything through."""

    host: str = Field(description="Upstream relay host name or address.")
    port: Port = Field(587, description="Upstream submission port (STARTTLS).")
    username: str = Field(description="Account on the upstream relay.")
    password_file: str = Field(description="File holding the upstream password (mode 0600).")
    spki_sha256: list[str] = Field(
        default_factory=list, description="Pinned SPKI SHA-256 (hex) of the upstream's certificate; empty: CA-verified."
    )
    ca_file: str = Field("", description="CA bundle to verify the upstream with (empty: system CAs).")


class RelayRoute(_Model):
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
            return _check_domain(v)

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


class ResolverConfig(_Model):
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


class VerifyConfig(_Model):
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
        return _check_domain(v) if v else v

    @field_validator("dnsbl_zones", "arc_trusted_sealers")
    @classmethod
    def _zones(cls, v: list[str]) -> list[str]:
        return [_check_domain(d) for d in v]


class OutboundResolverConfig(ResolverConfig):
    """The DNSSEC-validating resolver of outbound mail: MX, TLSA (DANE needs its AD bit), MTA-STS and TLS-RPT records."""

    nameservers: list[str] = Field(
        default_factory=lambda: ["127.0.0.1"],
        description="Resolver addresses asked in order (default: the box's own unbound, states/appliance/unbound.sls); "
        "empty: those in /etc/resolv.conf.",
    )


class OutboundConfig(_Model):
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


class RelayConfig(_Model):
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
    delivery_workers: int = Field(20, gt=0, description="Parallel deliveries in total.")
    upstream: UpstreamConfig | None = Field(None, description="Required when box.role is `edge`.")
    ca_file: str = Field(
        "",
        description="CA bundle used to verify member relays whose registry entry lists no SPKI pins, and relay routes "
        "without pins (empty: system CAs).",
    )

    @field_validator("relay_domains")
    @classmethod
    def _relay_domains(cls, v: list[str]) -> list[str]:
        return [_check_domain(d) for d in v]

    @field_validator("relay_routes", mode="before")
    @classmethod
    def _route_keys(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out = {}
        for k, r in v.items():
            try:
                out[_check_domain(str(k))] = r
            except ValueError as exc:
                raise ValueError(f"{k!r}: {exc}") from None
        return out


class AccessConfig(_Model):
    """The IMAP/POP service."""

    outbox: str = Field("Outbox", description="Folder whose APPENDed or COPYed messages are sent.")
    append_limit: int = Field(
        0, ge=0, description="Largest message IMAP APPEND accepts, in bytes, advertised as APPENDLIMIT (RFC 7889); "
        "0 means `relay.max_message_size`.",
    )
    special_folders: list[str] = Field(
        default_factory=lambda: ["Sent", "Drafts", "Trash", "Junk"], description="Folders created with every account."
    )


class RegistryConfig(_Model):
    """The consortium registry this box trusts."""

    url: str = Field("", description="Base URL of the TUF repository (metadata/ and targets/ under it). Empty: local file only.")
    root: str = Field("", description="The pinned, trusted root.json for the TUF client.")
    dir: str = Field("", description="Where the verified copy lives; default STATE_DIR/registry.")
    poll_interval: int = Field(300, gt=0, description="Seconds between polls (jittered by up to 10%).")
    alarm_after_failures: int = Field(3, gt=0, description="Consecutive failed polls before the alarm is raised.")
    firewall: Literal["auto", "off"] = Field(
        "auto",
        description="`auto`: load the member address set into nftables table `inet appliance` when nft and the "
        "table exist; `off` (development boxes): only write REGISTRY_DIR/members.nft.",
    )


def _size(value: object) -> object:
    """Bytes from a number or a string like "500M" / "2G" (binary units)."""
    if isinstance(value, str):
        from appliance.mailstore.quota import parse_size

        return parse_size(value)
    return value


Size = Annotated[int, BeforeValidator(_size), Field(ge=0)]


class LimitClass(_Model):
    """A customer limit class."""

    messages_per_minute: float = Field(gt=0, description="Sustained messages per minute.")
    burst: int = Field(ge=1, description="Messages that may be sent at once before the rate applies.")
    recipients_per_minute: float = Field(600, gt=0, description="Sustained recipients per minute.")
    per_day: int = Field(0, ge=0, description="Messages per calendar day (UTC); 0 means no daily quota.")
    access_connections_per_user_ip: int = Field(
        10, gt=0, description="Concurrent logged-in IMAP and POP3 sessions (together) of one account from one "
        "client address (IPv6 /64), like Dovecot's `mail_max_userip_connections`; the next login gets "
        "`* BYE [UNAVAILABLE]` (IMAP) or `-ERR [IN-USE]` (POP3)."
    )
    quota_storage: Size = Field(
        0, description="Mail quota of each account (RFC 9208 STORAGE): bytes, or a string like `\"2G\"` or "
        "`\"500M\"`; 0 means unlimited. `appliance user quota` overrides it per account."
    )
    quota_messages: int = Field(
        0, ge=0, description="Most messages each account may store (RFC 9208 MESSAGE); 0 means unlimited."
    )


class AbuseBrakeConfig(_Model):
    """Automatic hold of accounts whose sending looks compromised."""

    enabled: bool = Field(True, description="Whether the brake is armed.")
    window: int = Field(3600, gt=0, description="Seconds of recent sending that are judged.")
    new_recipients: int = Field(200, gt=0, description="First-time recipients in the window that trigger a hold.")
    rejected_ratio: float = Field(0.3, gt=0, le=1, description="Share of rejected/bounced recipients that triggers a hold.")
    min_sample: int = Field(20, gt=0, description="Recipients needed in the window before the ratio is judged.")


class LimitsConfig(_Model):
    """Rate limits (GCRA: a rate plus a burst)."""

    classes: dict[str, LimitClass] = Field(
        default_factory=lambda: {"default": LimitClass(messages_per_minute=30, burst=20, per_day=1000)},
        description="Customer limit classes by name; accounts use `default` unless set otherwise.",
    )
    connections_per_ip: int = Field(20, gt=0, description="Concurrent connections from one client address (IPv6 /64).")
    connection_rate_per_ip: float = Field(60, gt=0, description="New connections per minute from one client address.")
    connection_burst_per_ip: int = Field(30, ge=1, description="Burst of new connections from one client address.")
    access_connections_per_ip: int = Field(
        50, gt=0, description="Concurrent IMAP and POP3 connections from one client address (IPv6 /64) that have "
        "not logged in yet (logged-in ones count per account, see the limit class); the next one is refused "
        "at the greeting."
    )
    auth_failures_per_ip: int = Field(5, gt=0, description="AUTH/LOGIN failures from one address before `421 4.7.0`.")
    auth_failure_window: int = Field(300, gt=0, description="Seconds over which AUTH failures are counted.")
    auth_failures_per_account_new: int = Field(
        5, gt=0, description="Failed logins to one account, from all addresses it never logged in from together, "
        "per `auth_failure_window`; then logins to it from new addresses are refused for a while (SMTP "
        "`454 4.7.0`, IMAP `NO [LIMIT]`, POP3 `-ERR [SYS/TEMP]`). Addresses it logged in from before are unaffected."
    )
    auth_failures_per_account_known: int = Field(
        20, gt=0, description="Failed logins to one account from addresses it logged in from before, together, "
        "per `auth_failure_window` (more lenient: only the user and their networks count here)."
    )
    member_default_per_minute: float = Field(600, gt=0, description="Member message rate when its registry entry has none.")
    member_default_burst: int = Field(200, ge=1, description="Member burst when its registry entry has none.")
    member_default_connections: int = Field(
        20, gt=0, description="Concurrent connections from one member when its registry entry gives no "
        "`limits.connections` (docs/practice.md: at most the code of practice's bound)."
    )
    outsider_messages_per_minute_per_ip: float = Field(
        10, gt=0, description="Messages per minute from one outside client address (IPv6 /64), "
        "`relay.outsiders = \"verify\"`; then `450 4.7.1`."
    )
    outsider_burst_per_ip: int = Field(20, ge=1, description="Burst of messages from one outside client address.")
    outsider_messages_per_minute_per_net: float = Field(
        30, gt=0, description="Messages per minute from one outside /24 (IPv6 /48) together; then `450 4.7.1`."
    )
    outsider_burst_per_net: int = Field(60, ge=1, description="Burst of messages from one outside /24 (IPv6 /48).")
    abuse_brake: AbuseBrakeConfig = Field(default_factory=AbuseBrakeConfig, description="The abuse brake.")

    @field_validator("classes")
    @classmethod
    def _default_class(cls, v: dict[str, LimitClass]) -> dict[str, LimitClass]:
        if "default" not in v:
            raise ValueError("a `default` class is required")
        return v


def _refuse_password(url: str, key: str) -> None:
    """Passwords live in files (`*_password_file`), never in the config: it is world-readable and in pillar."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    if parts.password is not None or "password" in {k.lower() for k in parse_qs(parts.query)}:
        raise ValueError(f"has a password in it: put it in state.{key}_password_file instead")


class StateConfig(_Model):
    """Where limiter state and accounts live: this box alone (`local`) or shared by a fleet (docs/fleet.md)."""

    backend: Literal["local", "shared"] = Field(
        "local",
        description="`local`: SQLite and in-process memory on this box, as a single box needs; `shared`: the limiter "
        "in Redis (`state.redis_url`) and accounts in PostgreSQL (`state.postgres_url`), shared by every box.",
    )
    redis_url: str = Field(
        "", description="Redis of the shared limiter: `redis://[USER@]HOST:PORT/DB`, `rediss://...` (TLS) or "
        "`unix:///PATH?db=N`; no password in it (see `state.redis_password_file`)."
    )
    redis_password_file: str = Field(
        "", description="File holding the Redis password (mode 0600); empty: no AUTH."
    )
    redis_timeout: float = Field(
        0.5, gt=0, le=10,
        description="Seconds one Redis command or connect may take; then the decision fails and new mail gets "
        "`451 4.3.0`, so a dead Redis never hangs a session.",
    )
    connection_lease: int = Field(
        30, ge=5, le=3600,
        description="Seconds a box's shared connection counts live unless it refreshes them (every third of it): "
        "a box that crashed releases its slots after this long.",
    )
    postgres_url: str = Field(
        "", description="PostgreSQL of the shared accounts: `postgresql://[USER@]HOST[:PORT]/DBNAME`; no password "
        "in it (see `state.postgres_password_file`)."
    )
    postgres_password_file: str = Field(
        "", description="File holding the PostgreSQL password (mode 0600); empty: none (peer or cert auth)."
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        if v:
            if v.split("://", 1)[0] not in ("redis", "rediss", "unix") or "://" not in v:
                raise ValueError("must start with redis://, rediss:// or unix://")
            _refuse_password(v, "redis")
        return v

    @field_validator("postgres_url")
    @classmethod
    def _postgres_url(cls, v: str) -> str:
        if v:
            if v.split("://", 1)[0] not in ("postgresql", "postgres") or "://" not in v:
                raise ValueError("must start with postgresql://")
            _refuse_password(v, "postgres")
        return v

    def password(self, which: Literal["redis", "postgres"]) -> str | None:
        """The password read from `state.WHICH_password_file` (None: no file set); ConfigError names the key."""
        path = self.redis_password_file if which == "redis" else self.postgres_password_file
        if not path:
            return None
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"key state.{which}_password_file: {path}: {exc.strerror or exc}") from None
        if not text:
            raise ConfigError(f"key state.{which}_password_file: {path}: file is empty")
        return text


class PublishConfig(_Model):
    """What the box publishes about itself: DNS records (`appliance dns`), MTA-STS policy (docs/doctor.md)."""

    mta_sts_mode: Literal["testing", "enforce", "none"] = Field(
        "testing",
        description="MTA-STS policy mode (RFC 8461 5): `testing` (senders report, still deliver), `enforce` "
        "(senders refuse to deliver without valid TLS to box.hostname) or `none` (withdraws a policy).",
    )
    mta_sts_max_age: int = Field(
        604_800, ge=86_400, le=31_557_600,
        description="Seconds senders may cache the MTA-STS policy (RFC 8461 3.2: at most 31557600).",
    )
    addresses: list[str] = Field(
        default_factory=list,
        description="The box's public IP addresses (A/AAAA of box.hostname, PTR checked by `appliance doctor`); "
        "empty: not known (records not printed, checks skipped with a warning).",
    )
    dmarc_policy: Literal["none", "quarantine", "reject"] = Field(
        "quarantine", description="The p= of the DMARC record printed for each local domain (RFC 7489 6.3)."
    )
    report_address: str = Field(
        "", description="Where DMARC (rua=) and TLS-RPT aggregate reports go; empty: box.postmaster."
    )

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        return ip_list(v)

    @field_validator("report_address")
    @classmethod
    def _report(cls, v: str) -> str:
        if v and (v.count("@") != 1 or not v.split("@")[0]):
            raise ValueError("not an email address")
        return v and f"{v.split('@')[0]}@{_check_domain(v.split('@')[1])}"


class Config(_Model):
    """The whole box."""

    box: BoxConfig
    paths: PathsConfig = Field(default_factory=PathsConfig)
    tls: TlsConfig
    dkim: DkimConfig
    listeners: ListenersConfig = Field(default_factory=ListenersConfig)
    relay: RelayConfig = Field(default_factory=RelayConfig)
    access: AccessConfig = Field(default_factory=AccessConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)

    # Set by load(); not a key in the file.
    source: str = Field("", exclude=True, description="(internal) the file this was loaded from")

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        if self.listeners.console.tls != "implicit":
            # Passwords and session cookies (Secure) travel over it: HTTPS only.
            raise ValueError("listeners.console.tls: must be 'implicit' (the console is served over HTTPS only)")
        wk, con = self.listeners.wellknown, self.listeners.console
        if wk.enabled:
            if wk.tls != "implicit":
                raise ValueError("listeners.wellknown.tls: must be 'implicit' (the well-known names are HTTPS only)")
            if con.enabled and wk.port == con.port and _overlap(wk.host, con.host):
                raise ValueError(f"listeners.wellknown.port: {wk.port} is the console's port (listeners.console.port)")
        if self.box.role == "edge" and self.relay.upstream is None:
            raise ValueError("relay.upstream: required when box.role is 'edge'")
        if self.box.role == "member" and not self.box.member_id:
            raise ValueError("box.member_id: required when box.role is 'member'")
        # A domain accepted on port 25 with nowhere to send it would sit in the queue (or fall to
        # `outside`): refuse the config instead. Routes for domains not accepted are typos.
        for d in self.relay.relay_domains:
            if d not in self.relay.relay_routes:
                raise ValueError(f"relay.relay_domains: {d} has no next hop: add a [relay.relay_routes.\"{d}\"] table")
            if d in self.box.domains:
                raise ValueError(f"relay.relay_domains: {d} is a local domain (box.domains)")
        for d in self.relay.relay_routes:
            if d not in self.relay.relay_domains:
                raise ValueError(f"relay.relay_routes.{d}: not listed in relay.relay_domains")
        if self.state.backend == "shared":
            for key in ("redis_url", "postgres_url"):
                if not getattr(self.state, key):
                    raise ValueError(f"state.{key}: required when state.backend is 'shared'")
        self.fleet.check()  # home boxes (appliance/fleet_config.py)
        if self.fleet.boxes and self.state.backend != "shared":
            raise ValueError("fleet.boxes: home boxes need state.backend = 'shared' (the accounts are shared)")
        return self

    @property
    def registry_dir(self) -> Path:
        return Path(self.registry.dir or Path(self.paths.state_dir) / "registry")

    def dkim_domains(self) -> list[str]:
        return self.dkim.domains or list(self.box.domains)

    @property
    def outsiders(self) -> str:
        """relay.outsiders with its role default: `refuse` or `verify`."""
        return self.relay.outsiders or ("verify" if self.box.role == "edge" else "refuse")

    @property
    def authserv_id(self) -> str:
        return self.relay.verify.authserv_id or self.box.hostname


def _overlap(a: str, b: str) -> bool:
    """Whether binding A and B on one port would clash (the same address, or a wildcard of one family)."""
    wild = {"0.0.0.0", "::"}
    return a == b or a in wild or b in wild


def _format_error(path: str, err: dict[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ())]
    msg = err.get("msg", "invalid")
    # Cross-field checks report their key inside the message.
    if not loc and ": " in msg:
        key, _, reason = msg.removeprefix("Value error, ").partition(": ")
        return f"{path}: key {key}: {reason}"
    key = ".".join(loc)
    if err.get("type") == "extra_forbidden":
        return f"{path}: key {key}: unknown key"
    if err.get("type") == "missing":
        return f"{path}: key {key}: required key is missing"
    value = err.get("input")
    shown = repr(value) if not isinstance(value, dict) else "(table)"
    if "password" in msg:  # a URL with a password in it: do not repeat the secret in logs
        shown = "(not shown)"
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{path}: key {key}: value {shown}: {msg.removeprefix('Value error, ')}"


def parse(data: dict[str, Any], path: str = "<config>") -> Config:
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise ConfigError(_format_error(path, dict(first))) from None
    return cfg.model_copy(update={"source": path})


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate the config; raises ConfigError with a one-line reason."""
    p = str(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file (run `appliance init --dev DIR` for a development box)") from None
    except PermissionError:
        raise ConfigError(f"{p}: permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse(data, p)


# --- reference documentation, generated from the models -----------------------------------


def _type_name(annotation: Any) -> str:
    generic = getattr(annotation, "__origin__", None) is not None or "|" in str(annotation)
    text = str(annotation) if generic else (getattr(annotation, "__name__", None) or str(annotation))
    return (
        text.replace("typing.", "")
        .replace("appliance.config.", "")
        .replace("appliance.fleet_config.", "")
        .replace("__main__.", "")
        .replace("<class '", "")
        .replace("'>", "")
    )


def _doc_model(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    rows: list[str] = []
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        ann = field.annotation
        sub = _submodel(ann)
        if sub is not None and not str(ann).startswith("dict"):
            nested.append((f"{prefix}{name}", sub))
            continue
        if field.is_required():
            default = "required"
        else:
            d = field.get_default(call_default_factory=True)
            if isinstance(d, BaseModel):
                d = d.model_dump()
            default = f"`{d!r}`" if d not in (None, "") else ("`\"\"`" if d == "" else "none")
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | `{_type_name(ann)}` | {default} | {desc} |")
    title = prefix.rstrip(".") or "(top level)"
    out.append(f"## `[{title}]`\n")
    if model.__doc__:
        out.append(model.__doc__.strip() + "\n")
    if rows:
        out.append("| key | type | default | meaning |\n| --- | --- | --- | --- |")
        out.extend(rows)
        out.append("")
    for sub_prefix, sub in nested:
        _doc_model(sub, sub_prefix + ".", out)


def _submodel(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def reference_markdown() -> str:
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m appliance.config --docs`; edit appliance/config.py, not this file. -->",
        "",
        f"One TOML file, default `{DEFAULT_CONFIG}` (override with `-c FILE` or `${CONFIG_ENV}`).",
        "Unknown keys and values of the wrong type are refused before anything listens, with one line",
        "naming the file, the key, the value and the reason (`appliance` exits with status 2).",
        "Salt renders this file from pillar (`states/appliance/files/appliance.toml.jinja`);",
        "`appliance init --dev DIR` writes one for a loopback box.",
        "",
        "`limits.classes.NAME` tables all have the keys of `LimitClass` below;",
        "`relay.relay_routes.DOMAIN` tables those of `RelayRoute`.",
        "",
    ]
    for name, field in Config.model_fields.items():
        if field.exclude:
            continue
        sub = _submodel(field.annotation)
        if sub is not None:
            _doc_model(sub, f"{name}.", out)
    _doc_model(LimitClass, "limits.classes.NAME.", out)
    _doc_model(RelayRoute, "relay.relay_routes.DOMAIN.", out)
    _doc_model(FleetBox, "fleet.boxes.NAME.", out)
    return "\n".join(out).rstrip() + "\n"
