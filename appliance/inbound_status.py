"""The `inbound` part of `appliance status`: relay.outsiders and what the verification checks counted.

The counts are the relay's own (``relay_inbound_auth_total`` on ``listeners.metrics``, since
the relay started), read over loopback HTTP; None when the relay does not answer.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

from appliance.config import Config

METRIC = "relay_inbound_auth"
TIMEOUT = 2.0


def relay_counts(cfg: Config) -> dict[str, dict[str, int]] | None:
    """{check: {result: count}} from the running relay, or None."""
    from prometheus_client.parser import text_string_to_metric_families

    ep = cfg.listeners.metrics
    if not ep.enabled or not ep.port:
        return None
    host = ep.host if ep.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{ep.port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:  # our own endpoint (listeners.metrics)
            text = resp.read(4 * 1024 * 1024).decode("utf-8", "replace")
    except (OSError, urllib.error.URLError, ValueError):
        return None
    counts: dict[str, dict[str, int]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != METRIC:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                check, result = sample.labels.get("check", "?"), sample.labels.get("result", "?")
                counts.setdefault(check, {})[result] = int(sample.value)
    return counts


def inbound_status(cfg: Config) -> dict[str, Any]:
    verify = cfg.relay.verify
    return {
        "outsiders": cfg.outsiders,
        "authserv_id": cfg.authserv_id,
        "resolver": list(cfg.relay.resolver.nameservers) or "system (/etc/resolv.conf)",
        "dnsbl_zones": list(verify.dnsbl_zones),
        "arc_trusted_sealers": list(verify.arc_trusted_sealers),
        "counts": relay_counts(cfg) if cfg.outsiders == "verify" else None,
    }


def render(st: dict[str, Any]) -> list[str]:
    if st["outsiders"] != "verify":
        return ["inbound: outsiders refused (relay.outsiders = refuse): only members' relays on port 25"]
    lines = [f"inbound: outsiders verified (relay.outsiders = verify), authserv-id {st['authserv_id']}, "
             f"resolver {st['resolver']}, dnsbl {', '.join(st['dnsbl_zones']) or 'none'}"]
    counts = st["counts"]
    if counts is None:
        lines.append("  counts: relay not answering on its metrics endpoint")
    for check in ("dnsbl", "spf", "dkim", "arc", "dmarc", "action"):
        if counts and check in counts:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(counts[check].items()))
            lines.append(f"  {check:<7} {shown}")
    return lines
