"""One round of the registry sync agent, shared by the service and `appliance registry sync --once`.

A round syncs through TUF (``client.sync_once``), then reports in
``REGISTRY_DIR/state.json`` (the contract in docs/ARCHITECTURE.md)::

    {"version", "expires", "last_success", "consecutive_failures", "alarm", "expired",
     "last_error", "last_attempt", "members", "source"}

``expired`` becomes true when the last good registry's metadata has expired;
the relay then answers members ``421 4.7.0`` (temporary, nothing lost) and
customers are unaffected. The agent never fails open: a refused update never
touches registry.json, and an expired copy is never reported as current.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from appliance.config import Config
from appliance.registry import firewall, model
from appliance.registry.client import SyncError, sync_once
from appliance.registry.repo import write_atomic

log = logging.getLogger("registry_sync")


@dataclass(frozen=True)
class RoundResult:
    ok: bool
    message: str  # one line: what happened or why the update was refused
    state: dict[str, Any]


def _iso(t: dt.datetime | None) -> str | None:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if t else None


def _parse_iso(s: str | None) -> dt.datetime | None:
    if not s:
        return None
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def read_state(cfg: Config) -> dict[str, Any]:
    try:
        data = json.loads((cfg.registry_dir / "state.json").read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_state(cfg: Config, state: dict[str, Any]) -> None:
    write_atomic(cfg.registry_dir / "state.json", (json.dumps(state, indent=2, sort_keys=True) + "\n").encode())


def _write_metrics(cfg: Config, state: dict[str, Any]) -> None:
    """Prometheus textfile (node_exporter's textfile collector can pick it up)."""
    reg = CollectorRegistry()
    expires = _parse_iso(state.get("expires"))
    last = _parse_iso(state.get("last_success"))
    values = {
        "appliance_registry_version": (state.get("version") or 0, "Targets version of the trusted registry."),
        "appliance_registry_expires_timestamp_seconds": (expires.timestamp() if expires else 0, "Expiry of the trusted metadata."),
        "appliance_registry_last_success_timestamp_seconds": (last.timestamp() if last else 0, "Last successful sync."),
        "appliance_registry_consecutive_failures": (state.get("consecutive_failures", 0), "Failed polls in a row."),
        "appliance_registry_alarm": (1 if state.get("alarm") else 0, "1 while the registry alarm is raised."),
        "appliance_registry_expired": (1 if state.get("expired") else 0, "1 while members are refused (expired)."),
    }
    for name, (value, doc) in values.items():
        Gauge(name, doc, registry=reg).set(float(value))
    write_to_textfile(str(cfg.registry_dir / "metrics.prom"), reg)


def run_round(cfg: Config, now: dt.datetime | None = None) -> RoundResult:
    reg_dir = cfg.registry_dir
    reg_dir.mkdir(parents=True, exist_ok=True)
    # One round at a time: the service and `sync --once` share the TUF cache and state.json.
    with open(reg_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _round(cfg, now or dt.datetime.now(dt.UTC))


def _round(cfg: Config, now: dt.datetime) -> RoundResult:
    reg_dir = cfg.registry_dir
    prev = read_state(cfg)
    state: dict[str, Any] = {
        "version": prev.get("version"),
        "expires": prev.get("expires"),
        "last_success": prev.get("last_success"),
        "consecutive_failures": int(prev.get("consecutive_failures", 0)),
        "members": prev.get("members"),
        "source": cfg.registry.url or "local file",
        "last_attempt": _iso(now),
        "last_error": None,
        "alarm": None,
        "expired": False,
    }
    if not cfg.registry.url:
        # No repository configured: the operator maintains registry.json by hand.
        try:
            reg = model.load(reg_dir / "registry.json")
            state.update(members=len(reg.members), consecutive_failures=0, last_success=_iso(now))
            ok, msg = True, f"local registry.json valid, {len(reg.members)} member(s) (registry.url is empty)"
        except (OSError, model.RegistryError) as exc:
            state["consecutive_failures"] += 1
            ok, msg = False, f"local registry.json refused: {exc}"
            state["last_error"] = msg
        return _finish(cfg, state, ok, msg, now, None)
    try:
        res = sync_once(cfg.registry.url, cfg.registry.root, reg_dir)
    except SyncError as exc:
        state["consecutive_failures"] += 1
        state["last_error"] = str(exc)
        return _finish(cfg, state, False, f"update refused, last good registry kept: {exc}", now, None)
    state.update(version=res.version, expires=_iso(res.expires), last_success=_iso(now),
                 consecutive_failures=0, members=res.members)
    msg = f"registry version {res.version}, {res.members} member(s), expires {_iso(res.expires)}" + (
        " (updated)" if res.changed else " (unchanged)")
    return _finish(cfg, state, True, msg, now, res.changed)


def _finish(cfg: Config, state: dict[str, Any], ok: bool, msg: str, now: dt.datetime,
            changed: bool | None) -> RoundResult:
    expires = _parse_iso(state.get("expires"))
    if cfg.registry.url:
        # Never synced, or the last good copy's metadata ran out: members are refused (421).
        state["expired"] = expires is None or now >= expires
    n = state["consecutive_failures"]
    if state["expired"]:
        state["alarm"] = (f"trusted registry expired at {state.get('expires')}: members get 421 4.7.0"
                          if expires else "no verified registry yet: members get 421 4.7.0")
        if state["last_error"]:
            state["alarm"] += f" (last error: {state['last_error']})"
    elif n >= cfg.registry.alarm_after_failures:
        state["alarm"] = f"registry update failed {n} times in a row: {state['last_error']}"
    if ok and (changed is not False or not (cfg.registry_dir / "members.nft").exists()):
        try:
            reg = model.load(cfg.registry_dir / "registry.json")
            log.info("%s", firewall.apply(reg, cfg.registry_dir / "members.nft", cfg.registry.firewall))
        except (OSError, RuntimeError, model.RegistryError) as exc:
            log.error("firewall update failed: %s", exc)
    _write_state(cfg, state)
    try:
        _write_metrics(cfg, state)
    except OSError as exc:
        log.error("metrics file not written: %s", exc)
    if state["alarm"]:
        log.error("ALARM: %s", state["alarm"])
    (log.info if ok else log.warning)("%s", msg)
    return RoundResult(ok, msg, state)
