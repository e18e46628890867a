"""Running the code of practice: probe one relay, or every member of an operator's registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.practice import probes, report
from appliance.practice.code import Code
from appliance.registry import model


def target_for(host: str, port: int, member: model.Member | None, domain: str | None = None,
               **kw: Any) -> probes.Target:
    pins: tuple[str, ...] = ()
    if member is not None:
        relay = next((r for r in member.relays if r.host == host and r.port == port), None)
        if relay is None:
            raise ValueError(f"member {member.id} has no relay {host}:{port}")
        pins = relay.spki_sha256
        domain = domain or member.domains[0]
    if not domain:
        raise ValueError("the candidate's mail domain is needed: give --member ID or --domain DOMAIN")
    return probes.Target(host, port, domain.lower(), pins, member.id if member else None, **kw)


def probe(t: probes.Target, code: Code) -> dict[str, Any]:
    results = probes.run_all(t, code)
    return report.make("probe", code.version, f"{t.host}:{t.port}", t.member, results,
                       {"domain": t.domain, **t.observed})


@dataclass
class MemberOutcome:
    member: str
    relay: str
    report: dict[str, Any]

    @property
    def failed(self) -> list[str]:
        # A control the probe could not run (no test account) is not drift.
        return [r["control"] for r in self.report["results"] if r["status"] == probes.FAIL]


def probe_members(reg: model.Registry, code: Code, source: str | None = None,
                  timeout: float = 10.0) -> list[MemberOutcome]:
    """Every relay of every active member, except the probe's own entry (its domain is the code's)."""
    out = []
    for m in reg.members:
        if not m.active or code.probe_domain in m.domains:
            continue
        for r in m.relays:
            t = target_for(r.host, r.port, m, source=source, timeout=timeout)
            out.append(MemberOutcome(m.id, f"{r.host}:{r.port}", probe(t, code)))
    return out
