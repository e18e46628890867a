"""`appliance doctor [--json]`: the box's DNS, certificate, clock, registry, disk and listeners checked."""

from __future__ import annotations

import argparse
import json

from appliance.cli import config_from
from appliance.doctor import exit_status, run_checks

MARK = {"ok": "ok     ", "warning": "WARNING", "error": "ERROR  "}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("doctor", help="check DNS, certificate, clock, registry, disk and listeners; exit 1 on error")
    p.add_argument("--json", action="store_true", help="a JSON list of {check, level, summary, fix}")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    findings = run_checks(config_from(args))
    if args.json:
        print(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        for f in findings:
            print(f"{MARK[f.level]} {f.check}: {f.summary}")
            if f.fix:
                print(f"        -> {f.fix}")
        counts = {lvl: sum(1 for f in findings if f.level == lvl) for lvl in MARK}
        print(f"{counts['ok']} ok, {counts['warning']} warnings, {counts['error']} errors")
    return exit_status(findings)
