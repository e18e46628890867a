"""`appliance status [--json]`."""

from __future__ import annotations

import argparse
import json

from appliance.cli import config_from
from appliance.status import collect, render_text, services_ok


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help="services, endpoints, queue, registry and certificate state")
    p.add_argument("--json", action="store_true", help="machine-readable output (keys documented in docs/status.md)")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    st = collect(config_from(args))
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
    else:
        print(render_text(st))
    # Non-zero when a service is not running or flapping, so scripts and monitoring notice (docs/status.md).
    return 0 if services_ok(st) else 1
