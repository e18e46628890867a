"""`appliance up [--foreground]` and `appliance down`."""

from __future__ import annotations

import argparse

from appliance import supervision
from appliance.catalog import SERVICES, endpoints
from appliance.cli import CommandError, config_from


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("up", help="start supervisord and the services")
    p.add_argument("--foreground", action="store_true", help="run supervisord in the foreground until Ctrl-C")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("down", help="stop the services and supervisord; leaves no process behind")
    p.set_defaults(func=cmd_down)


def cmd_up(args: argparse.Namespace) -> int:
    cfg = config_from(args)  # refuses a bad config before anything listens
    for spec in SERVICES:
        if not spec.built:
            print(f"{spec.name}: not built yet, not started")
    print("endpoints:")
    for e in endpoints(cfg):
        if e.enabled:
            print(f"  {e.name:<12} {e.host}:{e.port} tls={e.tls}")
    try:
        supervision.start(cfg, cfg.source, foreground=args.foreground)
    except supervision.SupervisionError as exc:
        raise CommandError(str(exc)) from None
    print(f"running; `appliance -c {cfg.source} status` to check, `appliance -c {cfg.source} down` to stop")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    if supervision.stop(cfg):
        print("stopped")
    else:
        print("not running")
    return 0
