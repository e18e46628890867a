"""The `outbound` part of `appliance status`: what relay.outside = "mx" enforces, and today's TLS results."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

from appliance.config import Config
from appliance.tlspolicy import tlsrpt


def outbound_status(cfg: Config) -> dict[str, Any]:
    ob = cfg.relay.outbound
    st: dict[str, Any] = {"outside": cfg.relay.outside, "dane": ob.dane, "mta_sts": ob.mta_sts,
                          "tlsrpt": ob.tlsrpt, "resolver": list(ob.resolver.nameservers) or "system (/etc/resolv.conf)",
                          "today": {}}
    db = Path(tlsrpt.db_path(cfg.paths.state_dir))
    if cfg.relay.outside == "mx" and db.exists():
        day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            for ptype, ok, count in con.execute(
                    "SELECT policy_type, result_type = '', SUM(count) FROM result WHERE day = ? GROUP BY 1, 2", (day,)):
                st["today"].setdefault(ptype, {"success": 0, "failure": 0})["success" if ok else "failure"] = count
        except sqlite3.Error:
            st["today"] = None
        finally:
            con.close()
    return st


def render(st: dict[str, Any]) -> list[str]:
    if st["outside"] != "mx":
        return ["outbound: mail to the Internet refused (relay.outside = refuse)"]
    on = [name for name, key in (("DANE", "dane"), ("MTA-STS", "mta_sts"), ("TLS-RPT counts", "tlsrpt")) if st[key]]
    lines = [f"outbound: DNS MX (relay.outside = mx), enforced: {', '.join(on) or 'nothing (opportunistic TLS only)'}; "
             f"resolver {st['resolver']}"]
    today = st["today"]
    if today is None:
        lines.append("  today: TLS-RPT counts unreadable")
    for ptype, c in sorted((today or {}).items()):
        lines.append(f"  today {ptype:<4} sessions ok={c['success']} failed={c['failure']}")
    return lines
