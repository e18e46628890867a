#!{{ venv }}/bin/python
"""Fill the nftables sets that open port 25 to consortium members.

Managed by Salt (states/appliance/firewall.sls). Reads the verified registry the
registry agent installed (config: registry_dir/registry.json), takes every relay
address of every *active* member, and replaces the contents of
`inet appliance consortium_v4` / `consortium_v6` in one nft transaction, so there
is no moment with an empty set. A missing or invalid registry leaves the sets
as they are (exit 1): the relay itself refuses non-members as well.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from appliance.config import ConfigError, load
from appliance.registry.firewall import render
from appliance.registry.model import RegistryError
from appliance.registry.model import load as load_registry


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default="{{ config_file }}")
    ap.add_argument("--registry", help="registry.json to read (default: the config's registry dir)")
    ap.add_argument("--dry-run", action="store_true", help="print the nft commands instead of running them")
    args = ap.parse_args()
    try:
        path = args.registry or str(load(args.config).registry_dir / "registry.json")
    except ConfigError as exc:
        print(f"appliance-firewall-sync: {exc}", file=sys.stderr)
        return 1
    try:
        registry = load_registry(path)
    except FileNotFoundError:
        # Normal before the box joins a consortium: nothing to open yet.
        print(f"appliance-firewall-sync: {path}: no registry yet; port 25 stays closed to members")
        return 0
    except (OSError, ValueError, RegistryError) as exc:
        print(f"appliance-firewall-sync: {path}: {exc}; sets left unchanged", file=sys.stderr)
        return 1
    # The same rendering the registry agent uses, so both fill the sets identically.
    script = render(registry)
    nets = {n for m in registry.members if m.active for r in m.relays for n in r.addresses}
    v4 = sum(1 for n in nets if n.version == 4)
    if args.dry_run:
        sys.stdout.write(script)
        return 0
    proc = subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True)
    if proc.returncode != 0:
        print(f"appliance-firewall-sync: nft: {proc.stderr.strip()}", file=sys.stderr)
        return 1
    print(f"appliance-firewall-sync: port 25 open to {v4} IPv4 and {len(nets) - v4} IPv6 networks of active members")
    return 0


if __name__ == "__main__":
    sys.exit(main())
