"""What the box runs: the services, their endpoints, and whether each is built.

This is the one place a service is declared. Supervisor's program sections,
`appliance status` and the Salt states all read it, so a service is defined once
(as docker-mailserver does) and enabled by config. `appliance` never imports
`services`; it only names the module supervisor starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.config import Config, Listener


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str  # run as `python -m MODULE -c CONFIG`
    endpoints: tuple[str, ...]  # keys of config.listeners
    built: bool  # False: shown as "not built" in status, never started
    description: str


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        "relay",
        "services.relay",
        ("mx", "submission", "submissions", "metrics"),
        built=True,
        description="SMTP relay: policy, limits, spool, delivery (aiosmtpd)",
    ),
    ServiceSpec(
        "access",
        "services.access",
        ("imap", "imaps", "pop3", "pop3s", "access_metrics"),
        built=True,
        description="IMAP/POP that can also send (Twisted)",
    ),
    ServiceSpec(
        "registry_sync",
        "services.registry_sync",
        (),
        built=True,
        description="Consortium registry sync agent (python-tuf)",
    ),
    ServiceSpec(
        "console",
        "services.console",
        ("console", "wellknown", "wellknown_http"),
        built=True,
        description="Web console: health, queue, accounts, limits, graphs; the well-known names (twisted.web)",
    ),
)


@dataclass(frozen=True)
class Endpoint:
    name: str
    service: str
    host: str
    port: int
    tls: str
    enabled: bool


def endpoints(cfg: Config) -> list[Endpoint]:
    out: list[Endpoint] = []
    for spec in SERVICES:
        for name in spec.endpoints:
            lst: Listener = getattr(cfg.listeners, name)
            out.append(Endpoint(name, spec.name, lst.host, lst.port, lst.tls, lst.enabled))
    return out


def built_services() -> list[ServiceSpec]:
    return [s for s in SERVICES if s.built]
