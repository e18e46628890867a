"""`[limits]`: rate limits, customer limit classes, the abuse brake."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator

from appliance.config.base import Model


def _size(value: object) -> object:
    """Bytes from a number or a string like "500M" / "2G" (binary units)."""
    if isinstance(value, str):
        from appliance.mailstore.quota import parse_size

        return parse_size(value)
    return value


Size = Annotated[int, BeforeValidator(_size), Field(ge=0)]


class LimitClass(Model):
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


class AbuseBrakeConfig(Model):
    """Automatic hold of accounts whose sending looks compromised."""

    enabled: bool = Field(True, description="Whether the brake is armed.")
    window: int = Field(3600, gt=0, description="Seconds of recent sending that are judged.")
    new_recipients: int = Field(200, gt=0, description="First-time recipients in the window that trigger a hold.")
    rejected_ratio: float = Field(0.3, gt=0, le=1, description="Share of rejected/bounced recipients that triggers a hold.")
    min_sample: int = Field(20, gt=0, description="Recipients needed in the window before the ratio is judged.")


class LimitsConfig(Model):
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
