"""What every part of the config shares: the model base, the one-line error, the value checks."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_CONFIG = "/etc/appliance/appliance.toml"
CONFIG_ENV = "APPLIANCE_CONFIG"

Port = Annotated[int, Field(ge=0, le=65535)]
TlsMode = Literal["starttls", "implicit", "none"]


class ConfigError(Exception):
    """A config file that cannot be used; ``str()`` is the one-line message."""


class Model(BaseModel):
    # Unknown keys are refused (a typo must not be silently ignored) and
    # values are not coerced: "25" is not a port.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def check_domain(value: str) -> str:
    """A domain name lower-cased without its final dot; ValueError says why it is not one."""
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


def ip_list(v: list[str]) -> list[str]:
    """IP address list keys (relay.resolver.nameservers, publish.addresses): each one normalised, the bad one named."""
    out = []
    for a in v:
        try:
            out.append(str(ipaddress.ip_address(a)))
        except ValueError:
            raise ValueError(f"{a!r} is not an IP address") from None
    return out
