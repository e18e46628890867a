"""`appliance user add|del|passwd|list|alias|limits|release|disable|enable`.

Passwords are read from stdin (``--password-stdin``) or prompted for without
echo; never taken from the command line, never printed, never logged.
"""

from __future__ import annotations

import argparse
import getpass
import json
import secrets
import sys
from pathlib import Path

from appliance.accounts import AccountError, AccountStore, LimitOverride
from appliance.addresses import AddressError, domain_of
from appliance.cli import CommandError, config_from
from appliance.config import Config


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("user", help="customer accounts")
    s = p.add_subparsers(dest="user_command", metavar="ACTION", required=True)

    a = s.add_parser("add", help="add an account (password from --password-stdin, a prompt, or --generate)")
    a.add_argument("address")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    g.add_argument("--generate", action="store_true", help="generate a password and print it once")
    a.add_argument("--class", dest="limit_class", default="default", help="limit class (default: default)")
    a.set_defaults(func=cmd_add)

    d = s.add_parser("del", help="delete an account (its Maildir is kept)")
    d.add_argument("address")
    d.set_defaults(func=cmd_del)

    pw = s.add_parser("passwd", help="set an account's password")
    pw.add_argument("address")
    pw.add_argument("--password-stdin", action="store_true")
    pw.set_defaults(func=cmd_passwd)

    ls = s.add_parser("list", help="list accounts")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    al = s.add_parser("alias", help="identities an account may send as")
    als = al.add_subparsers(dest="alias_command", metavar="ACTION", required=True)
    for verb in ("add", "del"):
        x = als.add_parser(verb)
        x.add_argument("address")
        x.add_argument("identity")
        x.set_defaults(func=cmd_alias_add if verb == "add" else cmd_alias_del)

    lim = s.add_parser("limits", help="per-account rate limit override")
    lim.add_argument("address")
    lim.add_argument("--per-minute", type=float)
    lim.add_argument("--burst", type=int)
    lim.add_argument("--per-day", type=int)
    lim.add_argument("--class", dest="limit_class", help="set the limit class")
    lim.add_argument("--clear", action="store_true", help="remove the override (back to the class)")
    lim.set_defaults(func=cmd_limits)

    for verb, helptext in (("disable", "refuse logins"), ("enable", "allow logins again")):
        x = s.add_parser(verb, help=helptext)
        x.add_argument("address")
        x.set_defaults(func=cmd_disable_enable)

    rel = s.add_parser("release", help="release an account held by the abuse brake")
    rel.add_argument("address")
    rel.set_defaults(func=cmd_release)


def _store(args: argparse.Namespace) -> tuple[AccountStore, Config]:
    cfg = config_from(args)
    return AccountStore(cfg.paths.accounts_db), cfg


def _check_limit_class(cfg: Config, limit_class: str) -> None:
    if limit_class not in cfg.limits.classes:
        raise CommandError(f"--class {limit_class}: no such limit class in limits.classes")


def _read_password(args: argparse.Namespace) -> str:
    if getattr(args, "password_stdin", False):
        line = sys.stdin.readline()
        pw = line.rstrip("\r\n")
        if not pw:
            raise CommandError("no password on stdin")
        return pw
    if not sys.stdin.isatty():
        raise CommandError("no terminal to prompt on: use --password-stdin")
    pw = getpass.getpass("Password: ")
    if pw != getpass.getpass("Again: "):
        raise CommandError("passwords differ")
    return pw


def _guard(fn):  # type: ignore[no-untyped-def]
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return int(fn(args) or 0)
        except (AccountError, AddressError) as exc:
            raise CommandError(str(exc)) from None

    return wrapped


@_guard
def cmd_add(args: argparse.Namespace) -> int:
    store, cfg = _store(args)
    if domain_of(args.address) not in cfg.box.domains:
        raise CommandError(f"{args.address}: domain is not one of this box's domains ({', '.join(cfg.box.domains)})")
    _check_limit_class(cfg, args.limit_class)
    pw = secrets.token_urlsafe(12) if args.generate else _read_password(args)
    acct = store.add(args.address, pw, args.limit_class)
    _make_maildir(cfg, acct.address)
    print(f"added {acct.address}")
    if args.generate:
        print(f"password: {pw}")
    return 0


def _make_maildir(cfg: Config, address: str) -> None:
    local, domain = address.split("@", 1)
    base = Path(cfg.paths.mail_dir) / domain / local
    folders = [base] + [base / f".{name}" for name in cfg.access.special_folders]
    for f in folders:
        for sub in ("tmp", "new", "cur"):
            (f / sub).mkdir(parents=True, exist_ok=True)


@_guard
def cmd_del(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    store.delete(args.address)
    print(f"deleted {args.address} (Maildir kept)")
    return 0


@_guard
def cmd_passwd(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    if store.get(args.address) is None:
        raise CommandError(f"no account {args.address}")
    store.set_password(args.address, _read_password(args))
    print(f"password changed for {args.address}")
    return 0


@_guard
def cmd_list(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    accounts = store.list()
    if args.json:
        print(json.dumps([
            {"address": a.address, "identities": list(a.identities), "disabled": a.disabled,
             "limit_class": a.limit_class, "held": a.held,
             "override": None if a.override is None else vars(a.override)}
            for a in accounts], indent=2))
        return 0
    for a in accounts:
        flags = [f"class={a.limit_class}"]
        if a.override:
            flags.append(f"override={a.override.per_minute}/min burst {a.override.burst} day {a.override.per_day}")
        if a.disabled:
            flags.append("DISABLED")
        if a.held:
            flags.append(f"HELD ({a.held_reason})")
        ids = f" aliases: {', '.join(a.identities)}" if a.identities else ""
        print(f"{a.address}  {' '.join(flags)}{ids}")
    return 0


@_guard
def cmd_alias_add(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    store.add_alias(args.address, args.identity)
    print(f"{args.address} may now send as {args.identity}")
    return 0


@_guard
def cmd_alias_del(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    store.del_alias(args.address, args.identity)
    print(f"removed alias {args.identity} from {args.address}")
    return 0


@_guard
def cmd_limits(args: argparse.Namespace) -> int:
    store, cfg = _store(args)
    if store.get(args.address) is None:
        raise CommandError(f"no account {args.address}")
    if args.limit_class:
        _check_limit_class(cfg, args.limit_class)
        store.set_limit_class(args.address, args.limit_class)
    if args.clear:
        store.set_limits(args.address, None)
    elif args.per_minute is not None or args.burst is not None:
        if args.per_minute is None or args.burst is None:
            raise CommandError("--per-minute and --burst go together")
        store.set_limits(args.address, LimitOverride(args.per_minute, args.burst, args.per_day))
    a = store.get(args.address)
    assert a is not None
    print(f"{a.address}: class {a.limit_class}, override {vars(a.override) if a.override else 'none'}")
    print(f"today (UTC): {_sent_today(cfg, a.address)} message(s) accepted")
    return 0


def _sent_today(cfg: Config, address: str) -> int:
    import time

    from appliance.ratelimit.keys import account_key
    from appliance.ratelimit.store import LimitStore, limits_db

    limits = LimitStore(limits_db(cfg))
    try:
        return limits.daily_count(account_key(address), time.time())
    finally:
        limits.close()


@_guard
def cmd_disable_enable(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    store.set_disabled(args.address, args.user_command == "disable")
    print(f"{args.user_command}d {args.address}")
    return 0


@_guard
def cmd_release(args: argparse.Namespace) -> int:
    from appliance.ratelimit.brake import release

    store, cfg = _store(args)
    # Lifts the hold and resets the abuse brake's window, so the events that
    # tripped it cannot trip it again at the account's next message.
    release(cfg, store, args.address)
    print(f"released {args.address}")
    return 0
