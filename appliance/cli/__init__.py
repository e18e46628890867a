"""`appliance [-c CONFIG] COMMAND`: the same CLI on a box and in development.

Each command group is a module with ``register(subparsers)``; its handlers take
``(args)`` and return an exit status. Exit status 2 means a bad config or bad
arguments, 1 a refused operation, 0 success.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from appliance.config import CONFIG_ENV, DEFAULT_CONFIG, Config, ConfigError, load

# Command-group modules, in the order `appliance --help` lists them.
GROUPS = ("devbox", "run", "status", "user", "queue", "registry", "configcmd")


class CommandError(Exception):
    """A refused operation: printed as one line, exit status 1."""


def config_from(args: argparse.Namespace) -> Config:
    return load(args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description="ISP Mail Appliance")
    parser.add_argument(
        "-c",
        "--config",
        default=None,
        help=f"config file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in GROUPS:
        try:
            mod = importlib.import_module(f"appliance.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"appliance.cli.{name}":
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"appliance: config error: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"appliance: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def run() -> None:
    sys.exit(main())
