"""The consortium's member list (target ``registry.json``) as an immutable snapshot.

The relay holds one ``Registry`` at a time and swaps it whole on reload, so a
connection keeps the snapshot it started with. Validation here is semantic (the
TUF layer has already checked signatures, expiry and rollback): no address in
two members, sane limits, well-formed domains and pins.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PIN = re.compile(r"^[0-9a-f]{64}$")
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
STATUSES = ("active", "suspended")
MAX_REGISTRY_BYTES = 4 * 1024 * 1024


class RegistryError(ValueError):
    """registry.json is not acceptable; the message names the member and field."""


@dataclass(frozen=True)
class Relay:
    host: str
    port: int
    addresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    spki_sha256: tuple[str, ...] = ()


@dataclass(frozen=True)
class MemberLimits:
    messages_per_minute: float
    burst: int
    connections: int


@dataclass(frozen=True)
class Member:
    id: str
    name: str
    status: str
    abuse: str
    domains: tuple[str, ...]
    relays: tuple[Relay, ...]
    limits: MemberLimits | None

    @property
    def active(self) -> bool:
        return self.status == "active"

    def pins(self) -> frozenset[str]:
        return frozenset(p for r in self.relays for p in r.spki_sha256)

    def owns_address(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip in net for r in self.relays for net in r.addresses)


@dataclass(frozen=True)
class Registry:
    consortium: str
    code_of_practice: str
    members: tuple[Member, ...]
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def member(self, member_id: str) -> Member | None:
        return next((m for m in self.members if m.id == member_id), None)

    def member_for_address(self, address: str) -> Member | None:
        """The member (active or not) whose relay addresses contain ADDRESS."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return next((m for m in self.members if m.owns_address(ip)), None)

    def member_for_domain(self, domain: str) -> Member | None:
        d = domain.lower().rstrip(".")
        return next((m for m in self.members if d in m.domains), None)


def _req(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise RegistryError(f"{where}: missing {key}")
    v = d[key]
    if not isinstance(v, typ) or isinstance(v, bool) and typ is not bool:
        raise RegistryError(f"{where}: {key} has the wrong type")
    return v


def parse(data: dict[str, Any]) -> Registry:
    if not isinstance(data, dict):
        raise RegistryError("registry: not a JSON object")
    members_raw = _req(data, "members", list, "registry")
    members: list[Member] = []
    seen_ids: set[str] = set()
    seen_nets: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
    seen_domains: dict[str, str] = {}
    for i, m in enumerate(members_raw):
        where = f"members[{i}]"
        if not isinstance(m, dict):
            raise RegistryError(f"{where}: not an object")
        mid = _req(m, "id", str, where)
        where = f"member {mid}"
        if not _ID.match(mid):
            raise RegistryError(f"{where}: id must be lower-case letters, digits and dashes")
        if mid in seen_ids:
            raise RegistryError(f"{where}: duplicate id")
        seen_ids.add(mid)
        status = _req(m, "status", str, where)
        if status not in STATUSES:
            raise RegistryError(f"{where}: status must be one of {', '.join(STATUSES)}")
        domains = []
        for dom in _req(m, "domains", list, where):
            if not isinstance(dom, str) or not _DOMAIN.match(dom.lower()):
                raise RegistryError(f"{where}: malformed domain {dom!r}")
            dom = dom.lower()
            if dom in seen_domains:
                raise RegistryError(f"{where}: domain {dom} already belongs to member {seen_domains[dom]}")
            seen_domains[dom] = mid
            domains.append(dom)
        relays = []
        for j, r in enumerate(_req(m, "relays", list, where)):
            rw = f"{where} relays[{j}]"
            if not isinstance(r, dict):
                raise RegistryError(f"{rw}: not an object")
            host = _req(r, "host", str, rw)
            port = r.get("port", 25)
            if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
                raise RegistryError(f"{rw}: port must be 1..65535")
            nets = []
            for a in _req(r, "addresses", list, rw):
                try:
                    net = ipaddress.ip_network(a, strict=True)
                except (ValueError, TypeError):
                    raise RegistryError(f"{rw}: malformed address {a!r}") from None
                if net.num_addresses > 65536 and net.version == 4 or net.version == 6 and net.prefixlen < 48:
                    raise RegistryError(f"{rw}: address range {a} is too wide")
                for other_id, other in seen_nets:
                    if net.overlaps(other) and other_id != mid:
                        raise RegistryError(f"{rw}: address {a} overlaps member {other_id}'s {other}")
                seen_nets.append((mid, net))
                nets.append(net)
            pins = r.get("spki_sha256", [])
            if not isinstance(pins, list) or not all(isinstance(p, str) and _PIN.match(p) for p in pins):
                raise RegistryError(f"{rw}: spki_sha256 must be a list of 64 lower-case hex digits")
            relays.append(Relay(host, port, tuple(nets), tuple(pins)))
        limits = None
        if "limits" in m:
            lim = m["limits"]
            if not isinstance(lim, dict):
                raise RegistryError(f"{where}: limits must be an object")
            try:
                limits = MemberLimits(float(lim["messages_per_minute"]), int(lim["burst"]), int(lim.get("connections", 20)))
            except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: int(Infinity), found by fuzzing
                raise RegistryError(f"{where}: limits need messages_per_minute and burst numbers") from None
            if not (0 < limits.messages_per_minute <= 1_000_000 and 1 <= limits.burst <= 1_000_000
                    and 1 <= limits.connections <= 10_000):
                raise RegistryError(f"{where}: limits out of range")
        members.append(
            Member(mid, str(m.get("name", mid)), status, str(m.get("abuse", "")), tuple(domains), tuple(relays), limits)
        )
    return Registry(str(data.get("consortium", "")), str(data.get("code_of_practice", "")), tuple(members), data)


def loads(raw: bytes | str, where: str = "registry.json") -> Registry:
    """Parse and validate registry.json's bytes; RegistryError (naming WHERE) for anything unacceptable."""
    if len(raw) > MAX_REGISTRY_BYTES:
        raise RegistryError(f"{where}: larger than {MAX_REGISTRY_BYTES} bytes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise RegistryError(f"{where}: not valid JSON: {exc}") from None
    except RecursionError:  # deeply nested arrays: the json module recurses per level
        raise RegistryError(f"{where}: nested too deeply") from None
    return parse(data)


def load(path: str | Path) -> Registry:
    p = Path(path)
    if p.stat().st_size > MAX_REGISTRY_BYTES:
        raise RegistryError(f"{p}: larger than {MAX_REGISTRY_BYTES} bytes")
    return loads(p.read_bytes(), str(p))
