"""`appliance config check | docs`."""

from __future__ import annotations

import argparse

from appliance.cli import config_from
from appliance.config import reference_markdown


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("config", help="check the config file or print its reference")
    s = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = s.add_parser("check", help="validate the config; exit 2 with one line naming the key if it is bad")
    c.set_defaults(func=cmd_check)
    d = s.add_parser("docs", help="print the configuration reference (docs/configuration.md)")
    d.set_defaults(func=lambda args: print(reference_markdown(), end="") or 0)


def cmd_check(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    print(f"{cfg.source}: ok")
    return 0
