"""`appliance dns [--json]`: every DNS record the operator should publish (docs/doctor.md)."""

from __future__ import annotations

import argparse
import json

from appliance.cli import CommandError, config_from
from appliance.publish.records import PublishError, expected_records, zone_lines


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("dns", help="the DNS records to publish: MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, TLSA, SRV")
    p.add_argument("--json", action="store_true", help="a JSON list of {name, type, value, why}")
    p.set_defaults(func=cmd_dns)


def cmd_dns(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    try:
        records = expected_records(cfg)
    except PublishError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(json.dumps([r.as_dict() for r in records], indent=2))
    else:
        print(f"; DNS records for {cfg.box.hostname} ({', '.join(cfg.box.domains)}), from {cfg.source}")
        print("; PTR records are set by whoever owns the address block, not in your zone.")
        print("\n".join(zone_lines(records)))
    return 0
