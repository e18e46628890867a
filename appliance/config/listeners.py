"""`[listeners.*]`: every endpoint the box serves."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator

from appliance.config.base import Model, Port, TlsMode


class Listener(Model):
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


class PublicWebListener(Listener):
    """The caps every public web listener has (services/console/wellknown.py counts them)."""

    max_connections: int = Field(200, ge=1, le=100_000, description="Open connections at most, all clients together.")
    max_per_client: int = Field(8, ge=1, le=10_000,
                                description="Open connections at most per client address (IPv6 counted by /64).")
    connection_lifetime: float = Field(
        30.0, ge=1.0, le=3600.0,
        description="Seconds a connection may live in all, the TLS handshake included; then it is closed.",
    )


class WellKnownListener(PublicWebListener):
    """The public HTTPS listener for the well-known names (services/console/wellknown.py, docs/console.md):
    mta-sts.DOMAIN, autoconfig.DOMAIN, autodiscover.DOMAIN and box.hostname. Off until its table is written."""

    host: str = Field("0.0.0.0", description="Address to bind (public: senders and mail clients fetch from outside).")
    port: Port = Field(443, description="TCP port (RFC 8461 3.3 and the mail clients use 443).")
    tls: TlsMode = Field("implicit", description="Must be `implicit` (HTTPS only).")


class WellKnownHttpListener(PublicWebListener):
    """The public plain-HTTP listener (services/console/wellknown_http.py, docs/console.md): Thunderbird's
    `http://autoconfig.DOMAIN/mail/config-v1.1.xml`, Outlook's Autodiscover redirect (302), ACME HTTP-01
    challenges from `acme_webroot`; every other request on the well-known names a 301 to the same https:// URL.
    Never the console or the MTA-STS policy. Needs `[listeners.wellknown]`. Off until its table is written."""

    host: str = Field("0.0.0.0", description="Address to bind (public: mail clients and the ACME CA fetch from outside).")
    port: Port = Field(80, description="TCP port (clients and ACME HTTP-01 use 80).")
    tls: TlsMode = Field("none", description="Must be `none` (plain HTTP).")
    acme_webroot: str = Field(
        "", description="certbot's `--webroot` directory: `/.well-known/acme-challenge/TOKEN` is served from "
        "ACME_WEBROOT/.well-known/acme-challenge/TOKEN (Salt sets it from tls:certbot:webroot); empty: none served.",
    )

    @field_validator("acme_webroot")
    @classmethod
    def _webroot(cls, v: str) -> str:
        if v and not v.startswith("/"):
            raise ValueError("must be an absolute path")
        return v.rstrip("/") or v


class ListenersConfig(Model):
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
    wellknown_http: WellKnownHttpListener = Field(
        default_factory=lambda: WellKnownHttpListener(enabled=False),
        description="Plain HTTP on the well-known names (docs/console.md): Thunderbird's HTTP autoconfig, "
        "redirects to HTTPS, ACME HTTP-01 from a webroot. Off unless a `[listeners.wellknown_http]` table is "
        "written (then on by default); needs `listeners.wellknown` on.",
    )
