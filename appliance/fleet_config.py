"""`[fleet]`: this box's name and the fleet's boxes, for home boxes (issue 16 item 5, docs/fleet.md).

An account's `home` names the box that holds its Maildir. Every box needs to know its own name
(`fleet.box`) and, for every other box, where its relay and its access service listen on the
internal network and how to verify them (the fleet's CA). Kept apart from appliance/config/
because only a fleet needs it; the models follow the same rules (unknown keys refused, no
coercion) and are checked when the config loads, before anything listens.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from appliance import hostport

BOX_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def parse_hostport(value: str, what: str = "fleet.boxes.NAME") -> tuple[str, int]:
    """HOST:PORT or [IPV6]:PORT -> (host, port) (appliance/hostport.py); ValueError names WHAT."""
    return hostport.parse(value, what)


class FleetBox(_Model):
    """One box of the fleet, as the other boxes reach it on the internal network."""

    relay: str = Field(
        description="HOST:PORT of the box's relay port 25 listener (`listeners.mx`): local mail for accounts whose "
        "home is this box is delivered there, STARTTLS required, verified against `fleet.ca_file`.",
    )
    access: str = Field(
        description="HOST:PORT of the box's IMAPS listener (`listeners.imaps`, implicit TLS): IMAP logins of accounts "
        "whose home is this box are proxied there, verified against `fleet.ca_file`.",
    )
    pop3: str = Field(
        "", description="HOST:PORT of the box's POP3S listener (`listeners.pop3s`, implicit TLS): POP3 logins of its "
        "accounts are proxied there; empty: they are refused on the other boxes (`-ERR [SYS/PERM]`).",
    )
    tls_name: str = Field(
        "", description="Name (or IP address) the box's certificate must carry; empty: the HOST of "
        "`relay`/`access`/`pop3`.",
    )
    spki_sha256: list[str] = Field(
        default_factory=list,
        description="Hex SHA-256 of the SubjectPublicKeyInfo of the certificate(s) the box presents as a TLS client "
        "(`appliance registry` pin format): a port-25 client presenting one is this fleet's box, whose mail from the "
        "local domains (its customers', already checked there) is accepted. Empty: the box's internal mail from "
        "local-domain senders is refused on port 25.",
    )

    @field_validator("spki_sha256")
    @classmethod
    def _pins(cls, v: list[str]) -> list[str]:
        for pin in v:
            if not re.fullmatch(r"[0-9a-f]{64}", pin):
                raise ValueError(f"{pin!r} is not a hex SHA-256 (64 lowercase hex digits)")
        return v

    @field_validator("relay", "access", "pop3")
    @classmethod
    def _hostport(cls, v: str, info: ValidationInfo) -> str:
        if v or info.field_name != "pop3":  # pop3 may be empty (not proxied)
            parse_hostport(v, f"fleet.boxes.NAME.{info.field_name}")
        return v

    def relay_hop(self) -> tuple[str, int]:
        return parse_hostport(self.relay)

    def access_hop(self) -> tuple[str, int]:
        return parse_hostport(self.access)

    def pop3_hop(self) -> tuple[str, int] | None:
        return parse_hostport(self.pop3) if self.pop3 else None

    def name_for(self, host: str) -> str:
        return self.tls_name or host


class FleetConfig(_Model):
    """Home boxes (docs/fleet.md "Home boxes"): empty on a single box, where every account is at home."""

    box: str = Field(
        "", description="This box's name in the fleet (an account's `home`); empty: a single box, every account is "
        "at home here.",
    )
    boxes: dict[str, FleetBox] = Field(
        default_factory=dict,
        description="The other boxes of the fleet by name (this box may be listed too): `[fleet.boxes.NAME]` tables "
        "with the keys of `FleetBox` below.",
    )
    ca_file: str = Field(
        "", description="PEM file of the CA(s) the fleet's box certificates are verified against (required when "
        "`fleet.boxes` is not empty).",
    )
    connect_timeout: float = Field(
        5.0, gt=0, le=60,
        description="Seconds a proxied login waits for the home box to connect and answer; then `NO [UNAVAILABLE]`.",
    )

    @field_validator("box")
    @classmethod
    def _box(cls, v: str) -> str:
        if v and not BOX_NAME.fullmatch(v):
            raise ValueError("must be a box name: lowercase letters, digits and '-' (at most 63)")
        return v

    @field_validator("boxes")
    @classmethod
    def _names(cls, v: dict[str, FleetBox]) -> dict[str, FleetBox]:
        for name in v:
            if not BOX_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a box name: lowercase letters, digits and '-' (at most 63)")
        return v

    def check(self) -> None:
        """Cross-key checks, called from Config's own (whose errors name the key: "key fleet.box: ...")."""
        if self.boxes:
            if not self.box:
                raise ValueError("fleet.box: required when fleet.boxes is set (this box's own name)")
            if not self.ca_file:
                raise ValueError("fleet.ca_file: required when fleet.boxes is set (to verify the other boxes)")
            if not Path(self.ca_file).is_file():
                raise ValueError(f"fleet.ca_file: {self.ca_file}: no such file")

    def box_pins(self) -> frozenset[str]:
        """The SPKI pins of every fleet box's client certificate (port 25: mail from a box of this fleet)."""
        return frozenset(p for box in self.boxes.values() for p in box.spki_sha256)

    def home_of(self, home: str) -> str:
        """HOME of an account as this box sees it: "" when the mail is here (no home, or this box)."""
        return "" if not home or home == self.box else home

    def is_known(self, name: str) -> bool:
        return name == self.box or name in self.boxes

    def proxy_addresses(self) -> frozenset[str]:
        """The IP addresses of the fleet's boxes (the IP-literal hosts of every box's `relay`, `access` and
        `pop3`): the proxies whose IMAP ID ``x-originating-ip`` is believed (Dovecot's
        ``login_trusted_networks``). A host given as a name is not resolved, so it is not trusted."""
        out = set()
        for box in self.boxes.values():
            for hop in (box.relay, box.access, box.pop3):
                if hop:
                    ip = normal_ip(parse_hostport(hop)[0])
                    if ip:
                        out.add(ip)
        return frozenset(out)


def normal_ip(text: str) -> str:
    """TEXT as one canonical IP address (an IPv4-mapped IPv6 address as IPv4), or "" if it is none."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)
