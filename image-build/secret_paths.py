"""Print the per-box secret files the tree's appliance config names, one absolute path a line.

The image build deletes them (appliance-firstboot makes them again on each box), so no two
boxes from one image share a key. Reads TREE/etc/appliance/appliance.toml; prints nothing
when there is no config.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def secret_paths(tree: Path) -> list[str]:
    cfg_file = tree / "etc/appliance/appliance.toml"
    if not cfg_file.exists():
        return []
    cfg = tomllib.loads(cfg_file.read_text())
    out: list[str] = []
    tls = cfg.get("tls", {})
    out += [tls[k] for k in ("cert", "key") if tls.get(k)]
    dkim = cfg.get("dkim", {})
    if dkim.get("key"):
        out += [dkim["key"], str(Path(dkim["key"]).with_suffix(".txt"))]
    upstream = cfg.get("relay", {}).get("upstream") or {}
    if upstream.get("password_file"):
        out.append(upstream["password_file"])
    return [p for p in out if p.startswith("/")]


if __name__ == "__main__":
    for p in secret_paths(Path(sys.argv[1])):
        print(p)
