"""`[publish]`: what the box publishes about itself (DNS records, MTA-STS policy)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from appliance.config.base import Model, check_domain, ip_list


class PublishConfig(Model):
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
        return v and f"{v.split('@')[0]}@{check_domain(v.split('@')[1])}"
