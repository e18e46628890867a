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
GROUPS = ("devbox", "run", "status", "user", "db", "queue", "registry", "practice", "configcmd", "dns", "doctor", "tlsrpt", "fleet")
# The group that registers each command. A call imports only its command's group (so `appliance
# user add` does not load python-tuf, nor `appliance status` the spool and delivery code); `--help`,
# a typo or a command missing here imports every group (argparse needs them all to list or refuse).
COMMANDS = {"init": "devbox", "up": "run", "down": "run", "status": "status", "user": "user", "db": "db",
            "queue": "queue", "registry": "registry", "practice": "practice", "config": "configcmd",
            "dns": "dns", "doctor": "doctor", "tlsrpt": "tlsrpt", "fleet": "fleet"}


class CommandError(Exception):
    """A refused operation: printed as one line, exit status 1."""


def config_from(args: argparse.Namespace) -> Config:
    return load(args.config)


def _command_word(argv: list[str]) -> str | None:
    """The command in ARGV (the first word that is not the -c/--config option or its value)."""
    words = iter(argv)
    for word in words:
        if word in ("-c", "--config"):
            next(words, None)
        elif word.startswith("--config=") or (word.startswith("-c") and not word.startswith("--")):
            continue
        elif word.startswith("-"):
            return None  # -h, or an option argparse must refuse with the full usage
        else:
            return word
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ARGV's command (every command when ARGV is None or names none we know)."""
    group = COMMANDS.get(_command_word(argv) or "") if argv is not None else None
    parser = argparse.ArgumentParser(prog="appliance", description="ISP Mail Appliance")
    parser.add_argument(
        "-c",
        "--config",
        default=None,
        help=f"config file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in (group,) if group in GROUPS else GROUPS:
        try:
            mod = importlib.import_module(f"appliance.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"appliance.cli.{name}":
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
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
