"""`appliance status`: what is running, where it listens, and the state of queue, registry and TLS.

The JSON form's keys are stable and documented in docs/status.md.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from appliance import supervision
from appliance.accounts import AccountStore
from appliance.catalog import SERVICES, endpoints
from appliance.config import Config
from appliance.tlsfiles import cert_expiry

STATUS_SCHEMA_VERSION = 1


def _count_files(d: Path) -> int:
    try:
        return sum(1 for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError:
        return 0


def queue_status(cfg: Config) -> dict[str, Any]:
    spool = Path(cfg.paths.spool_dir)
    return {
        "messages": _count_files(spool / "queue"),
        "corrupt": _count_files(spool / "corrupt"),
    }


def registry_status(cfg: Config) -> dict[str, Any]:
    d = cfg.registry_dir
    out: dict[str, Any] = {
        "source": cfg.registry.url or "local file",
        "version": None,
        "expires": None,
        "members": None,
        "last_success": None,
        "consecutive_failures": 0,
        "alarm": None,
    }
    try:
        reg = json.loads((d / "registry.json").read_text())
        out["members"] = len(reg.get("members", []))
    except (OSError, ValueError):
        out["alarm"] = "no registry on disk"
    try:
        state = json.loads((d / "state.json").read_text())
        for k in ("version", "expires", "last_success", "consecutive_failures", "alarm"):
            if k in state:
                out[k] = state[k]
    except (OSError, ValueError):
        pass
    return out


def tls_status(cfg: Config) -> dict[str, Any]:
    exp = cert_expiry(cfg.tls.cert)
    now = dt.datetime.now(dt.UTC)
    return {
        "source": cfg.tls.source,
        "cert": cfg.tls.cert,
        "expires": exp.isoformat() if exp else None,
        "days_left": (exp - now).days if exp else None,
    }


def service_status(cfg: Config) -> tuple[str, list[dict[str, Any]]]:
    info = supervision.process_info(cfg)
    services = []
    for spec in SERVICES:
        entry: dict[str, Any] = {"name": spec.name, "description": spec.description, "pid": None, "uptime_s": None}
        if not spec.built:
            entry["state"] = "not built"
        elif info is None or spec.name not in info:
            entry["state"] = "stopped"
        else:
            p = info[spec.name]
            entry["state"] = str(p["statename"]).lower()
            if p["statename"] == "RUNNING":
                entry["pid"] = p["pid"]
                entry["uptime_s"] = max(0, int(p["now"]) - int(p["start"]))
        services.append(entry)
    return ("running" if info is not None else "stopped"), services


def collect(cfg: Config) -> dict[str, Any]:
    sup, services = service_status(cfg)
    held: list[dict[str, Any]] = []
    if cfg.paths.accounts_db.exists():
        store = AccountStore(cfg.paths.accounts_db)
        try:
            held = [{"address": a.address, "reason": a.held_reason, "since": a.held_since} for a in store.held()]
        finally:
            store.close()
    return {
        "schema": STATUS_SCHEMA_VERSION,
        "config": cfg.source,
        "box": {
            "hostname": cfg.box.hostname,
            "role": cfg.box.role,
            "member_id": cfg.box.member_id,
            "domains": list(cfg.box.domains),
        },
        "supervisor": sup,
        "services": services,
        "endpoints": [
            {"name": e.name, "service": e.service, "host": e.host, "port": e.port, "tls": e.tls, "enabled": e.enabled}
            for e in endpoints(cfg)
        ],
        "queue": queue_status(cfg),
        "registry": registry_status(cfg),
        "tls": tls_status(cfg),
        "held_accounts": held,
    }


def render_text(st: dict[str, Any]) -> str:
    lines = [f"box {st['box']['hostname']} ({st['box']['role']}), domains {', '.join(st['box']['domains'])}"]
    lines.append(f"supervisor: {st['supervisor']}")
    lines.append("services:")
    for s in st["services"]:
        extra = f" pid {s['pid']} up {s['uptime_s']}s" if s["pid"] else ""
        lines.append(f"  {s['name']:<14} {s['state']:<10}{extra}  {s['description']}")
    lines.append("endpoints:")
    for e in st["endpoints"]:
        if e["enabled"]:
            lines.append(f"  {e['name']:<12} {e['host']}:{e['port']:<6} tls={e['tls']:<9} ({e['service']})")
        else:
            lines.append(f"  {e['name']:<12} disabled")
    q = st["queue"]
    lines.append(f"queue: {q['messages']} message(s), {q['corrupt']} quarantined as corrupt")
    r = st["registry"]
    lines.append(
        f"registry: version {r['version']}, expires {r['expires']}, {r['members']} member(s), source {r['source']}"
        + (f"  ALARM: {r['alarm']}" if r["alarm"] else "")
    )
    t = st["tls"]
    lines.append(f"tls: {t['source']} certificate, expires {t['expires']} ({t['days_left']} days)")
    if st["held_accounts"]:
        lines.append("held accounts (abuse brake; `appliance user release ADDRESS`):")
        for h in st["held_accounts"]:
            lines.append(f"  {h['address']}: {h['reason']}")
    return "\n".join(lines)
