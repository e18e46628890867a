"""`appliance doctor`: is this box set up right? Mail-in-a-Box's status checks, for this box.

``run_checks`` returns findings, each ``ok``, ``warning`` or ``error`` with one line saying
what to do. The console shows the same list. Checks that need the network ask only the
configured resolver (relay.resolver, else /etc/resolv.conf), the box's own listeners and
the registry's URL; a dev box without DNS gets warnings, never a crash.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import dns.resolver

from appliance.config import Config

Level = Literal["ok", "warning", "error"]
LEVELS: tuple[Level, ...] = ("ok", "warning", "error")


@dataclass(frozen=True)
class Finding:
    check: str  # e.g. "certificate", "dns TXT _dmarc.example.org"
    level: Level
    summary: str  # what was found
    fix: str = ""  # one line saying what to do ("" when ok)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def make_resolver(cfg: Config) -> dns.resolver.Resolver:
    """relay.resolver's servers (the relay's own view of DNS), else the system's."""
    rc = cfg.relay.resolver
    if rc.nameservers:
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = list(rc.nameservers)
        r.port = rc.port
    else:
        try:
            r = dns.resolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            r = dns.resolver.Resolver(configure=False)  # no nameservers: every query fails, reported once
    r.timeout = r.lifetime = rc.timeout
    return r


def run_checks(cfg: Config, resolver: dns.resolver.Resolver | None = None) -> list[Finding]:
    """Every check, in the order the CLI prints them."""
    from appliance.doctor import dnscheck, local, web

    findings: list[Finding] = []
    findings += local.check_certificate(cfg)
    findings += local.check_clock(cfg)
    findings += local.check_registry(cfg)
    findings += local.check_disk(cfg)
    findings += local.check_listeners(cfg)
    findings += web.check_web(cfg)
    findings += dnscheck.check_dns(cfg, resolver or make_resolver(cfg))
    return findings


def exit_status(findings: list[Finding]) -> int:
    """1 when any finding is an error, else 0 (warnings do not fail: a dev box has no DNS)."""
    return 1 if any(f.level == "error" for f in findings) else 0
