"""`[box]`, `[paths]`, `[tls]`, `[dkim]`: who the box is, where it keeps things, its keys."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from appliance.config.base import Model, check_domain


class BoxConfig(Model):
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
        return check_domain(v)

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one local domain is required")
        return [check_domain(d) for d in v]

    @property
    def postmaster_address(self) -> str:
        return self.postmaster or f"postmaster@{self.domains[0]}"


class PathsConfig(Model):
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


class TlsConfig(Model):
    """The certificate every TLS listener presents."""

    cert: str = Field(description="PEM certificate chain (certbot's fullchain.pem on a box).")
    key: str = Field(description="PEM private key.")
    source: Literal["self-signed", "certbot"] = Field(
        "self-signed", description="Where the certificate came from; shown in `appliance status`."
    )


class DkimConfig(Model):
    """DKIM signing (dkimpy) of mail submitted by customers."""

    selector: str = Field("mail", description="DKIM selector (the DNS record is SELECTOR._domainkey.DOMAIN).")
    key: str = Field(description="PEM RSA private key.")
    domains: list[str] = Field(
        default_factory=list, description="Domains to sign for; empty means all of box.domains."
    )
