"""`appliance status`: what is running, where it listens, and the state of queue, registry and TLS.

The JSON form's keys are stable and documented in docs/status.md.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance import supervision, watchdog
from appliance.accounts import AccountStore, AccountsUnavailable, open_accounts
from appliance.catalog import SERVICES, endpoints
from appliance.config import Config
from appliance.inbound_status import inbound_status
from appliance.inbound_status import render as render_inbound
from appliance.tlsfiles import cert_expiry
from appliance.tlspolicy.status import outbound_status
from appliance.tlspolicy.status import render as render_outbound

if TYPE_CHECKING:
    from appliance.accounts_pg import PgAccountStore

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
        if not isinstance(state, dict):
            raise ValueError("not an object")
        for k in ("version", "expires", "last_success", "consecutive_failures", "alarm"):
            if k in state:
                out[k] = state[k]
    except (OSError, ValueError):
        # The relay treats this as expired too (services/relay/registry_watch.py).
        out["alarm"] = out["alarm"] or "no readable report from the sync agent (state.json): members get 421 4.7.0"
        return out
    # The agent may have died after writing its last report: judge the expiry against the clock here,
    # as the relay does.
    try:
        expires = dt.datetime.fromisoformat(str(out["expires"]).replace("Z", "+00:00")) if out["expires"] else None
    except ValueError:
        expires = None
    if cfg.registry.url and expires is not None and dt.datetime.now(dt.UTC) >= expires and not out["alarm"]:
        out["alarm"] = f"trusted registry expired at {out['expires']} (is registry_sync running?): members get 421 4.7.0"
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


def service_status(cfg: Config, info: dict[str, dict[str, Any]] | None) -> tuple[str, list[dict[str, Any]]]:
    """Each service's state and ``alarm`` (None, or why it needs attention: anything but RUNNING,
    or flapping as the watchdog saw it). INFO: ``supervision.process_info``."""
    dog = watchdog.read_state(Path(cfg.paths.run_dir)) if info is not None else None
    dog_programs: dict[str, Any] = dog["programs"] if dog else {}
    services = []
    for spec in SERVICES:
        entry: dict[str, Any] = {"name": spec.name, "description": spec.description, "pid": None, "uptime_s": None,
                                 "alarm": None}
        if not spec.built:
            entry["state"] = "not built"
        elif info is None or spec.name not in info:
            entry["state"] = "stopped"
            entry["alarm"] = "not running (supervisor is not running)" if info is None else "not configured"
        else:
            p = info[spec.name]
            entry["state"] = str(p["statename"]).lower()
            if p["statename"] == "RUNNING":
                entry["pid"] = p["pid"]
                entry["uptime_s"] = max(0, int(p["now"]) - int(p["start"]))
            seen = dog_programs.get(spec.name) or {}
            if seen.get("flapping"):
                entry["alarm"] = seen.get("alarm") or "flapping"
            elif p["statename"] != "RUNNING":
                entry["alarm"] = seen.get("alarm") or f"{p['statename']}: not running"
        services.append(entry)
    return ("running" if info is not None else "stopped"), services


def watchdog_status(cfg: Config, info: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """The event listener that restarts FATAL services (appliance/watchdog.py)."""
    w = (info or {}).get("watchdog")
    running = w is not None and w["statename"] == "RUNNING"
    reported = watchdog.read_state(Path(cfg.paths.run_dir)) is not None
    alarm = None
    if info is not None and not (running and reported):
        alarm = "not running: FATAL services would not be restarted"
    return {"state": str(w["statename"]).lower() if w else "stopped", "pid": w["pid"] if running else None,
            "alarm": alarm}


def services_ok(st: dict[str, Any]) -> bool:
    """True when every built service runs and none needs attention (`appliance status` exit 0)."""
    return (st["supervisor"] == "running" and not any(s["alarm"] for s in st["services"])
            and not st["watchdog"]["alarm"] and not (st.get("accounts") or {}).get("alarm")
            and not (st.get("limiter") or {}).get("alarm"))


def collect(cfg: Config) -> dict[str, Any]:
    info = supervision.process_info(cfg)
    sup, services = service_status(cfg, info)
    held: list[dict[str, Any]] = []
    quota: dict[str, Any] = {"accounts_with_quota": 0, "near_full": []}
    # The accounts store of state.backend; the shared one is asked now, so its alarm is the present truth.
    accounts: dict[str, Any] = {"backend": cfg.state.backend, "alarm": None}
    if cfg.state.backend == "shared" or cfg.paths.accounts_db.exists():
        store = open_accounts(cfg)
        try:
            held = [{"address": a.address, "reason": a.held_reason, "since": a.held_since} for a in store.held()]
            quota = quota_status(cfg, store)
        except AccountsUnavailable as exc:
            accounts["alarm"] = str(exc)
        finally:
            store.close()
    # The limiter's state: with `shared`, Redis is asked now (a PING within state.redis_timeout).
    limiter: dict[str, Any] = {"backend": cfg.state.backend, "alarm": None}
    if cfg.state.backend == "shared":
        from appliance.ratelimit.shared import probe

        limiter["alarm"] = probe(cfg)
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
        "watchdog": watchdog_status(cfg, info),
        "endpoints": [
            {"name": e.name, "service": e.service, "host": e.host, "port": e.port, "tls": e.tls, "enabled": e.enabled}
            for e in endpoints(cfg)
        ],
        "queue": queue_status(cfg),
        "registry": registry_status(cfg),
        "tls": tls_status(cfg),
        "accounts": accounts,
        "limiter": limiter,
        "held_accounts": held,
        "mail_quota": quota,
        "inbound": inbound_status(cfg),
        "outbound": outbound_status(cfg),
    }


def quota_status(cfg: Config, store: AccountStore | PgAccountStore) -> dict[str, Any]:
    """Accounts with a mail quota, and those at or over 90 % of it (RFC 9208 STORAGE/MESSAGE)."""
    from appliance.mailstore import maildir_path
    from appliance.mailstore.quota import WARN_AT, limits_for, share, usage

    counted, near = 0, []
    for a in store.list():
        limits = limits_for(a, cfg.limits.classes)
        if limits.unlimited:
            continue
        counted += 1
        used = usage(maildir_path(cfg.paths.mail_dir, a.address))
        if share(used, limits) >= WARN_AT:
            near.append({"address": a.address, "used_bytes": used.bytes, "storage": limits.storage,
                         "used_messages": used.messages, "messages": limits.messages,
                         "percent": int(100 * share(used, limits))})
    return {"accounts_with_quota": counted, "near_full": near}


def render_text(st: dict[str, Any]) -> str:
    lines = [f"box {st['box']['hostname']} ({st['box']['role']}), domains {', '.join(st['box']['domains'])}"]
    lines.append(f"supervisor: {st['supervisor']}")
    lines.append("services:")
    for s in st["services"]:
        extra = f" pid {s['pid']} up {s['uptime_s']}s" if s["pid"] else ""
        lines.append(f"  {s['name']:<14} {s['state']:<10}{extra}  {s['description']}"
                     + (f"  ALARM: {s['alarm']}" if s["alarm"] else ""))
    w = st["watchdog"]
    lines.append(f"  {'(watchdog)':<14} {w['state']:<10}" + (f"  ALARM: {w['alarm']}" if w["alarm"] else ""))
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
    acc = st.get("accounts") or {"backend": "local", "alarm": None}
    lines.append("accounts: " + ("shared (PostgreSQL, state.postgres_url)" if acc["backend"] == "shared"
                                 else "local (SQLite)") + (f"  ALARM: {acc['alarm']}" if acc["alarm"] else ""))
    lim = st.get("limiter") or {"backend": "local", "alarm": None}
    lines.append("limiter: " + ("shared (Redis, state.redis_url)" if lim["backend"] == "shared"
                                else "local (in-process, SQLite)") + (f"  ALARM: {lim['alarm']}" if lim["alarm"] else ""))
    mq = st.get("mail_quota") or {"accounts_with_quota": 0, "near_full": []}
    lines.append(f"mail quota: {mq['accounts_with_quota']} account(s) with a quota, "
                 f"{len(mq['near_full'])} at or over 90 %")
    for n in mq["near_full"]:
        lines.append(f"  {n['address']}: {n['percent']} % ({n['used_bytes']}/{n['storage'] or '-'} bytes, "
                     f"{n['used_messages']}/{n['messages'] or '-'} messages)")
    if "inbound" in st:
        lines += render_inbound(st["inbound"])
    if "outbound" in st:
        lines += render_outbound(st["outbound"])
    if st["held_accounts"]:
        lines.append("held accounts (abuse brake; `appliance user release ADDRESS`):")
        for h in st["held_accounts"]:
            lines.append(f"  {h['address']}: {h['reason']}")
    return "\n".join(lines)
