"""What the console's health page shows: `appliance status`'s data, the disk, and `appliance doctor`."""

from __future__ import annotations

import shutil
from typing import Any

from appliance import status
from appliance.config import Config


def disk(cfg: Config) -> list[dict[str, Any]]:
    """Free space of each file system the box writes to (spool, mail, state), once per file system."""
    out, seen = [], set()
    for label, path in (("spool", cfg.paths.spool_dir), ("mail", cfg.paths.mail_dir), ("state", cfg.paths.state_dir)):
        try:
            u = shutil.disk_usage(path)
        except OSError as exc:
            out.append({"label": label, "path": path, "error": str(exc)})
            continue
        if (u.total, u.free) in seen:
            continue
        seen.add((u.total, u.free))
        out.append({"label": label, "path": path, "total": u.total, "free": u.free,
                    "percent_used": round(100 * (u.total - u.free) / u.total) if u.total else 0})
    return out


def collect(cfg: Config) -> dict[str, Any]:
    st = status.collect(cfg)
    st["disk"] = disk(cfg)
    st["ok"] = status.services_ok(st)
    return st


def doctor(cfg: Config) -> tuple[list[dict[str, str]], str]:
    """`appliance doctor`'s findings, or why there are none (the doctor is another engineer's module:
    imported lazily so the console runs without it)."""
    try:
        from appliance.doctor import run_checks
    except ImportError as exc:
        return [], f"appliance doctor is not available: {exc}"
    return [f.as_dict() for f in run_checks(cfg)], ""
