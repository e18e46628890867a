"""The code of practice as data: versioned, machine-readable, published as the TUF target ``practice.json``.

Each control has an id, a kind (``outside``: a probe anyone can run against a
relay; ``inside``: a check the member runs on its own box), a description, the
probe or check that decides it, and the RFC section or reason behind it. Bounds
are the numbers the probes and checks hold a member to. docs/practice.md lists
the same controls for people; ``appliance practice show`` prints this document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

TARGET_NAME = "practice.json"
VERSION = "2026-1"

# The probe's own mail domain. ".invalid" is reserved (RFC 2606 2, RFC 6761 6.4): it never
# resolves, so even a relay that wrongly accepts a relay test has nowhere to deliver it, and no
# real third party can ever receive a probe's mail.
PROBE_DOMAIN = "practice-probe.invalid"

# One row per control: (id, kind, probe, description, reference), the fields of ``Control``.
_ROWS: tuple[tuple[str, str, str, str, str], ...] = (
    ("no-open-relay", "outside", "open_relay",
     "Unauthenticated relaying to a foreign domain is refused, also through percent hacks, bang "
     "paths, source routes and quoted local parts.",
     "RFC 5321 3.6.2 and 7.1; RFC 2505 (anti-spam recommendations) 2.2"),
    ("no-smuggling", "outside", "smuggling",
     "A bare LF or bare CR around the end-of-data dot never ends DATA (no SMTP smuggling).",
     "RFC 5321 2.3.8 and 4.1.1.4: only <CRLF>.<CRLF> ends the mail data"),
    ("starttls", "outside", "starttls",
     "STARTTLS is offered and works, and commands sent in plaintext after STARTTLS are never "
     "executed inside the TLS session (command injection).",
     "RFC 3207 4 and 4.2 (discard prior knowledge); CVE-2011-0411"),
    ("auth-tls-only", "outside", "auth_before_tls",
     "AUTH is neither advertised nor processed before TLS: no password crosses the wire in clear.",
     "RFC 4954 4 and 14 (SHOULD NOT advertise plaintext mechanisms without TLS); RFC 8314 3"),
    ("forged-sender", "outside", "forged_sender",
     "Mail from outside claiming an envelope sender in the relay's own domains is refused.",
     "consortium rule: a member's domains are only sent from its own relays (DESIGN.md); RFC 5321 7.1"),
    ("forged-from-auth", "outside", "forged_from",
     "An authenticated customer cannot use a From: address that is not theirs (needs the "
     "candidate's test account).",
     "RFC 6409 8.1 (the MSA MAY/SHOULD check the sender); RFC 7489 (DMARC rests on it)"),
    ("rate-limit", "outside", "rate_limit",
     "A concurrency limit engages at or below the code's bound of connections from one peer.",
     "RFC 5321 4.5.3.2 (servers may limit resources); consortium rule: every peer is capped"),
    ("no-5xx-for-limits", "outside", "rate_limit",
     "A limit is answered with a temporary 4xx, never a permanent 5xx (the sender keeps the mail).",
     "RFC 5321 4.2.1 (4yz: transient) and 4.5.3.2; RFC 3463 4.7.x"),
    ("tls-certificate", "outside", "starttls",
     "The relay's certificate is within its validity dates and its SPKI SHA-256 is a pin the "
     "registry lists for this member.",
     "RFC 5280 4.1.2.5 (validity); RFC 7469 2.4 (SPKI pins); RFC 7672 (DANE SMTP) 3.1"),
    ("abuse-mailbox", "outside", "abuse_mailbox",
     "abuse@ of the member's domain accepts mail.",
     "RFC 2142 2 and 4 (abuse@ MUST be supported for an ISP's domains)"),
    ("limits-in-bounds", "inside", "limits",
     "The box's configured limits are within the code's bounds.",
     "consortium rule: limits the other members can rely on"),
    ("dkim-published", "inside", "dkim",
     "The DKIM signing key loads and its public key is the one published in DNS at "
     "SELECTOR._domainkey.DOMAIN.",
     "RFC 6376 3.6.2.1 and 6.1.2 (the verifier fetches the key from DNS)"),
    ("abuse-delivers", "inside", "abuse_delivery",
     "abuse@ of every domain of the box is an account or an alias, so mail to it is delivered.",
     "RFC 2142 4"),
    ("registry-fresh", "inside", "registry",
     "The registry agent synced recently, has no alarm and the registry has not expired.",
     "consortium rule: a stale registry admits suspended members"),
    ("tls-not-expiring", "inside", "tls_expiry",
     "The box's TLS certificate is valid for at least the code's minimum number of days.",
     "RFC 5280 4.1.2.5; a member with an expired certificate cannot be reached (pinned TLS)"),
)

BOUNDS: dict[str, int | float] = {
    # rate-limit: the probe opens one more connection than this; at least one must get a 4xx.
    "max_concurrent_connections": 50,
    # limits-in-bounds
    "max_customer_messages_per_minute": 120,
    "max_customer_messages_per_day": 10000,
    "max_member_messages_per_minute": 6000,
    # registry-fresh: seconds since the agent's last successful sync
    "max_registry_age_seconds": 3600,
    # tls-not-expiring
    "min_certificate_days": 7,
    # admission: how old a probe report add-member accepts
    "max_report_age_days": 7,
}


class CodeError(ValueError):
    """A code-of-practice document that cannot be used; the message says why."""


@dataclass(frozen=True)
class Control:
    id: str
    kind: str
    probe: str
    description: str
    reference: str


# The published document's controls: each row as a JSON object keyed by Control's field names.
CONTROLS: list[dict[str, str]] = [dict(zip((f.name for f in fields(Control)), row, strict=True)) for row in _ROWS]


@dataclass(frozen=True)
class Code:
    version: str
    probe_domain: str
    controls: tuple[Control, ...]
    bounds: dict[str, int | float]

    def ids(self, kind: str) -> list[str]:
        return [c.id for c in self.controls if c.kind == kind]

    def bound(self, name: str) -> float:
        return float(self.bounds[name])


def default_document() -> dict[str, Any]:
    return {"code_of_practice": VERSION, "probe_domain": PROBE_DOMAIN, "controls": CONTROLS, "bounds": BOUNDS}


def parse(data: Any) -> Code:
    if not isinstance(data, dict):
        raise CodeError("practice.json: not a JSON object")
    version = data.get("code_of_practice")
    if not isinstance(version, str) or not version:
        raise CodeError("practice.json: code_of_practice must be a non-empty version string")
    controls = []
    known = {c["id"] for c in CONTROLS}
    for i, c in enumerate(data.get("controls", [])):
        if not isinstance(c, dict) or not all(isinstance(c.get(k), str) for k in ("id", "kind", "probe", "description")):
            raise CodeError(f"practice.json: controls[{i}] needs string id, kind, probe and description")
        if c["kind"] not in ("outside", "inside"):
            raise CodeError(f"practice.json: control {c['id']}: kind must be outside or inside")
        if c["id"] not in known:
            # A control this software has no probe for could never pass: refuse it rather than skip it.
            raise CodeError(f"practice.json: control {c['id']}: no probe for it in this version of the appliance")
        controls.append(Control(c["id"], c["kind"], c["probe"], c["description"], str(c.get("reference", ""))))
    if not controls:
        raise CodeError("practice.json: no controls")
    bounds = data.get("bounds", {})
    if not isinstance(bounds, dict) or set(BOUNDS) - set(bounds):
        raise CodeError(f"practice.json: bounds must give {', '.join(sorted(BOUNDS))}")
    for k, v in bounds.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
            raise CodeError(f"practice.json: bounds.{k} must be a positive number")
    domain = data.get("probe_domain", PROBE_DOMAIN)
    if not isinstance(domain, str) or not domain:
        raise CodeError("practice.json: probe_domain must be a domain")
    return Code(version, domain.lower(), tuple(controls), dict(bounds))


def default_code() -> Code:
    return parse(default_document())


def load(path: str | Path | None) -> Code:
    """The code in PATH (e.g. the operator's REPO_DIR/practice.json), or this version's default."""
    if path is None:
        return default_code()
    p = Path(path)
    try:
        return parse(json.loads(p.read_text()))
    except OSError as exc:
        raise CodeError(f"{p}: cannot read: {exc}") from None
    except ValueError as exc:
        if isinstance(exc, CodeError):
            raise
        raise CodeError(f"{p}: not valid JSON: {exc}") from None
