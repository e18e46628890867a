"""`appliance init --dev DIR`."""

from __future__ import annotations

import argparse

from appliance.cli import CommandError
from appliance.devbox import DevBoxError, init_dev


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("init", help="write a development box's config, keys and registry")
    p.add_argument("--dev", metavar="DIR", required=True, help="directory for the development box")
    p.add_argument("--domain", default="example.test", help="local mail domain (default example.test)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--hostname", default=None, help="box name (default mx.DOMAIN)")
    p.add_argument(
        "--base-port", type=int, default=10025, help="first of 8 consecutive ports (default 10025); 0 lets the OS pick each"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing config")
    p.add_argument("--internet", action="store_true",
                   help="accept mail from outside the consortium on port 25, verified "
                   "(relay.outsiders = \"verify\", docs/internet.md)")
    p.set_defaults(func=cmd_init)


def cmd_init(args: argparse.Namespace) -> int:
    try:
        box = init_dev(args.dev, domain=args.domain, base_port=args.base_port, host=args.host,
                       hostname=args.hostname, force=args.force, internet=args.internet)
    except DevBoxError as exc:
        raise CommandError(str(exc)) from None
    except ValueError as exc:
        raise CommandError(f"--domain {args.domain}: {exc}") from None
    print(f"wrote {box.config_file}")
    for name, port in box.ports.items():
        print(f"  {name:<12} {args.host}:{port}")
    print(f"next: appliance -c {box.config_file} user add alice@{args.domain}; appliance -c {box.config_file} up")
    return 0
