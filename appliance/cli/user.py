"""`appliance user add|del|passwd|list|show|move|home|alias|limits|quota|release|disable|enable`.

Passwords are read from stdin (``--password-stdin``) or prompted for without
echo; never taken from the command line, never printed, never logged.
"""

from __future__ import annotations

import argparse
import getpass
import json
import secrets
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.accounts import Account, AccountError, AccountStore, AccountsUnavailable, LimitOverride, open_accounts
from appliance.addresses import AddressError, domain_of, normalize_address
from appliance.cli import CommandError, config_from
from appliance.config import Config
from appliance.mailstore import account_maildir, check_name, maildir_path
from appliance.mailstore.names import dir_name
from appliance.mailstore.paths import overlapping
from appliance.mailstore.quota import QuotaLimits, format_size, limits_for, parse_size, usage
from appliance.ratelimit.decisions import StateUnavailable

if TYPE_CHECKING:
    from appliance.accounts_pg import PgAccountStore


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("user", help="customer accounts")
    s = p.add_subparsers(dest="user_command", metavar="ACTION", required=True)

    a = s.add_parser("add", help="add an account (password from --password-stdin, a prompt, or --generate)")
    a.add_argument("address")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    g.add_argument("--generate", action="store_true", help="generate a password and print it once")
    a.add_argument("--class", dest="limit_class", default="default", help="limit class (default: default)")
    a.add_argument("--admin", action="store_true", help="may also log in to the web console as an operator")
    a.add_argument("--home", default="", metavar="BOX",
                   help="the fleet box (fleet.box / fleet.boxes name) that holds the Maildir; default: this box")
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

    sh = s.add_parser("show", help="one account: class, home box, flags, aliases")
    sh.add_argument("address")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=cmd_show)

    mv = s.add_parser("move", help="copy an account's Maildir to another fleet box (UIDs kept), then make it home")
    mv.add_argument("address")
    mv.add_argument("box", help="the target box's name (fleet.boxes)")
    where = mv.add_mutually_exclusive_group(required=True)
    where.add_argument("--target-mail-dir", metavar="DIR",
                       help="the target box's paths.mail_dir as this box sees it (same machine or a mount)")
    where.add_argument("--ssh", metavar="[USER@]HOST[:PORT]",
                       help="send the Maildir to the target over SSH with rsync (its key restricted by rrsync "
                            "to the target's mail dir; docs/fleet.md)")
    mv.add_argument("--known-hosts", metavar="FILE", help="with --ssh (required): the target's host key, checked")
    mv.add_argument("--ssh-key", metavar="FILE", help="with --ssh: the private key (default: ssh's own)")
    mv.add_argument("--late-wait", type=float, default=5.0, metavar="SECONDS",
                    help="after the flip, wait this long (at most 60) and copy mail that still arrived here "
                         "(deliveries that looked up the old home); 0: no second catch-up (default 5)")
    mv.add_argument("--hold-wait", type=float, default=60.0, metavar="SECONDS",
                    help="how long a running IMAP/POP3 command may take to finish before the move stops (default 60)")
    mv.set_defaults(func=cmd_move)

    hm = s.add_parser("home", help="record which fleet box already holds an account's Maildir (no copy)")
    hm.add_argument("address")
    hm.add_argument("box", help="a box of this fleet (fleet.box or fleet.boxes)")
    hm.set_defaults(func=cmd_home)

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

    q = s.add_parser("quota", help="per-account mail quota (RFC 9208 STORAGE and MESSAGE) and its usage")
    q.add_argument("address")
    q.add_argument("--storage", help="bytes or a size like 2G or 500M; 0: unlimited; 'default': the class's")
    q.add_argument("--messages", help="number of messages; 0: unlimited; 'default': the class's")
    q.set_defaults(func=cmd_quota)

    for verb, helptext in (("disable", "refuse logins"), ("enable", "allow logins again")):
        x = s.add_parser(verb, help=helptext)
        x.add_argument("address")
        x.set_defaults(func=cmd_disable_enable)

    rel = s.add_parser("release", help="release an account held by the abuse brake")
    rel.add_argument("address")
    rel.set_defaults(func=cmd_release)


def _store(args: argparse.Namespace) -> tuple[AccountStore | PgAccountStore, Config]:
    """The store of `state.backend`: this box's SQLite or the fleet's PostgreSQL (the same commands on both)."""
    cfg = config_from(args)
    return open_accounts(cfg), cfg


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
        except (AccountError, AccountsUnavailable, AddressError, StateUnavailable) as exc:
            raise CommandError(str(exc)) from None

    return wrapped


@_guard
def cmd_add(args: argparse.Namespace) -> int:
    store, cfg = _store(args)
    if domain_of(args.address) not in cfg.box.domains:
        raise CommandError(f"{args.address}: domain is not one of this box's domains ({', '.join(cfg.box.domains)})")
    _check_limit_class(cfg, args.limit_class)
    new = normalize_address(args.address)
    clash = overlapping(cfg.paths.mail_dir, [*(a.address for a in store.list() if a.address != new), new])
    if clash:  # defence in depth: maildir_path's escaping makes this impossible (issue 21)
        raise CommandError(f"{args.address}: its Maildir would overlap that of {clash[0]}")
    # In a fleet an account is always at home somewhere: by default on the box the command runs on.
    home = _check_home(cfg, args.home) or cfg.fleet.box
    pw = secrets.token_urlsafe(12) if args.generate else _read_password(args)
    acct = store.add(args.address, pw, args.limit_class, home=home)
    if args.admin:
        store.set_admin(acct.address, True)
    if not cfg.fleet.home_of(home):
        _make_maildir(cfg, acct.address)  # the home box makes the Maildir; another box's is made there
    print(f"added {acct.address}" + (" (console admin)" if args.admin else "")
          + (f" (home {home})" if home else ""))
    if args.generate:
        print(f"password: {pw}")
    return 0


def _check_home(cfg: Config, home: str) -> str:
    """--home BOX: a box of this box's `[fleet]` config (its own name or one of fleet.boxes)."""
    if home and not cfg.fleet.is_known(home):
        known = ", ".join(sorted({cfg.fleet.box, *cfg.fleet.boxes} - {""})) or "none: no [fleet] in the config"
        raise CommandError(f"--home {home}: not a box of this fleet (fleet.box and fleet.boxes: {known})")
    return home


def _make_maildir(cfg: Config, address: str) -> None:
    # The directories only: the index is created by the access service (as its own user) at first login.
    base = account_maildir(cfg.paths.mail_dir, address)
    folders = [base] + [base / dir_name(check_name(name)) for name in cfg.access.special_folders]
    for f in folders:
        for sub in ("tmp", "new", "cur"):
            (f / sub).mkdir(parents=True, exist_ok=True)


def _account(store: AccountStore | PgAccountStore, address: str) -> Account:
    """The account ADDRESS; CommandError if there is none."""
    a = store.get(address)
    if a is None:
        raise CommandError(f"no account {address}")
    return a


def _account_json(cfg: Config, a: Account, *, with_quota: bool) -> dict[str, Any]:
    """An account as `user show --json` and `user list --json` (WITH_QUOTA: its limits and usage) print it."""
    info: dict[str, Any] = {
        "address": a.address, "home": a.home, "home_is_this_box": not cfg.fleet.home_of(a.home),
        "limit_class": a.limit_class, "identities": list(a.identities), "disabled": a.disabled, "held": a.held,
        "held_reason": a.held_reason, "admin": a.admin, "override": None if a.override is None else vars(a.override)}
    if with_quota:
        limits, used = _quota_of(cfg, a)
        info["quota"] = {"storage": limits.storage, "messages": limits.messages,
                         "used_bytes": used[0], "used_messages": used[1]}
    return info


@_guard
def cmd_del(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    store.delete(args.address)
    print(f"deleted {args.address} (Maildir kept)")
    return 0


@_guard
def cmd_passwd(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    _account(store, args.address)
    store.set_password(args.address, _read_password(args))
    print(f"password changed for {args.address}")
    return 0


def _quota_of(cfg: Config, account: Account) -> tuple[QuotaLimits, tuple[int, int]]:
    return limits_for(account, cfg.limits.classes), tuple(usage(maildir_path(cfg.paths.mail_dir, account.address)))


def quota_text(limits: QuotaLimits, used: tuple[int, int]) -> str:
    """ "1M/2G 12/100000" style usage over limits ("-" for unlimited)."""
    storage = format_size(limits.storage) if limits.storage else "-"
    messages = str(limits.messages) if limits.messages else "-"
    return f"{format_size(used[0])}/{storage} {used[1]}/{messages}"


@_guard
def cmd_list(args: argparse.Namespace) -> int:
    store, cfg = _store(args)
    accounts = store.list()
    if args.json:
        print(json.dumps([_account_json(cfg, a, with_quota=True) for a in accounts], indent=2))
        return 0
    for a in accounts:
        elsewhere = cfg.fleet.home_of(a.home)  # its Maildir (and usage) is on another box
        flags = [f"class={a.limit_class}", f"quota=(on {a.home})" if elsewhere else f"quota={quota_text(*_quota_of(cfg, a))}"]
        if a.home:
            flags.append(f"home={a.home}")
        if a.override:
            flags.append(f"override={a.override.per_minute}/min burst {a.override.burst} day {a.override.per_day}")
        if a.admin:
            flags.append("ADMIN")
        if a.disabled:
            flags.append("DISABLED")
        if a.held:
            flags.append(f"HELD ({a.held_reason})")
        ids = f" aliases: {', '.join(a.identities)}" if a.identities else ""
        print(f"{a.address}  {' '.join(flags)}{ids}")
    return 0


@_guard
def cmd_show(args: argparse.Namespace) -> int:
    store, cfg = _store(args)
    a = _account(store, args.address)
    here = not cfg.fleet.home_of(a.home)
    if args.json:
        print(json.dumps(_account_json(cfg, a, with_quota=False), indent=2))
        return 0
    print(f"account {a.address}")
    print(f"  home: {a.home or '(this box)'}" + (" (this box)" if a.home and here else ""))
    print(f"  class: {a.limit_class}" + (f", override {vars(a.override)}" if a.override else ""))
    if here:
        print(f"  quota: {quota_text(*_quota_of(cfg, a))}")
    flags = [f for f, on in (("DISABLED", a.disabled), ("ADMIN", a.admin), (f"HELD ({a.held_reason})", a.held)) if on]
    print(f"  flags: {' '.join(flags) or 'none'}")
    print(f"  aliases: {', '.join(a.identities) or 'none'}")
    return 0


@_guard
def cmd_home(args: argparse.Namespace) -> int:
    """For accounts made before home boxes (empty home): say where the Maildir is. Copies nothing."""
    store, cfg = _store(args)
    if not args.box or not cfg.fleet.is_known(args.box):
        raise CommandError(f"{args.box!r}: not a box of this fleet (fleet.box and fleet.boxes)")
    _account(store, args.address)
    store.set_home(args.address, args.box)
    print(f"home of {normalize_address(args.address)} is now {args.box} (nothing copied: use `user move` to move mail)")
    return 0


@_guard
def cmd_move(args: argparse.Namespace) -> int:
    """Copy the Maildir (index by SQLite backup: UIDVALIDITY and UIDs kept), hold the account's
    sessions, copy again, flip `home`, catch up, release, catch up once more (appliance/homemove.py)."""
    import time

    from appliance.homemove import Hold, LocalMaildir, MoveError
    from appliance.homemove_ssh import RemoteMaildir, SshTarget

    store, cfg = _store(args)
    a = store.get(args.address)
    if a is None:
        raise CommandError(f"no account {args.address}")
    if not cfg.fleet.box or args.box not in cfg.fleet.boxes or args.box == cfg.fleet.box:
        raise CommandError(f"{args.box}: not another box of this fleet (fleet.boxes)")
    if cfg.fleet.home_of(a.home):
        raise CommandError(f"{a.address}: its home is {a.home}, not this box ({cfg.fleet.box}): run the move there")
    if not 0 <= args.late_wait <= 60:
        raise CommandError(f"--late-wait {args.late_wait:g}: must be between 0 and 60 seconds")
    src = maildir_path(cfg.paths.mail_dir, a.address)
    target: LocalMaildir | RemoteMaildir
    if args.ssh:
        try:
            ssh = SshTarget.parse(args.ssh, args.known_hosts, args.ssh_key)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        # rrsync roots every path at the target's mail directory, laid out as this box's is.
        target = RemoteMaildir(ssh, str(src.relative_to(cfg.paths.mail_dir)))
    else:
        if args.known_hosts or args.ssh_key:
            raise CommandError("--known-hosts and --ssh-key go with --ssh")
        dst = maildir_path(args.target_mail_dir, a.address)
        if src.resolve() == dst.resolve():
            raise CommandError(f"--target-mail-dir {args.target_mail_dir}: that is this box's own mail directory")
        target = LocalMaildir(dst)
    unchanged = f"home unchanged ({a.home or cfg.fleet.box})"
    try:
        copied = target.first_copy(src)
    except (MoveError, OSError) as exc:
        raise CommandError(f"move of {a.address}: {exc}: {unchanged}") from None
    hold = None
    late = 0
    try:
        try:
            hold = Hold(cfg.paths.run_dir, a.address, args.hold_wait)
            ended = hold.ended
            again = target.sync(src)
            hold.check()  # a restarted access service no longer holds the account: do not flip
            store.set_home(a.address, args.box)
        except (MoveError, OSError) as exc:
            raise CommandError(f"move of {a.address}: {exc}: {unchanged}; "
                               f"remove the copy {target.describe()} before trying again") from None
        try:
            late = target.catch_up(src, again.seen)  # still held: released once the late deliveries are copied
        except (MoveError, OSError) as exc:
            raise CommandError(f"home of {a.address} is now {args.box}, but copying the mail delivered "
                               f"during the move failed ({exc}): copy it from {src}") from None
    finally:
        if hold is not None:
            hold.close()
    if args.late_wait:
        # A delivery that looked up `home` just before the flip may still be writing here; the
        # access service no longer touches this Maildir (it proxies the account), so no hold is needed.
        time.sleep(args.late_wait)
        try:
            late += target.catch_up(src, again.seen)
        except (MoveError, OSError) as exc:
            raise CommandError(f"home of {a.address} is now {args.box}, but copying the mail delivered "
                               f"just before the flip failed ({exc}): copy it from {src}") from None
    print(f"moved {a.address} to {args.box} ({target.describe()}): {copied.files} file(s), {copied.bytes} bytes, "
          f"{copied.indexes} index(es) copied (UIDs kept)" + (f", {late} late arrival(s)" if late else ""))
    print(f"{ended} open session(s) on this box ended; {again.files} file(s) changed during the copy "
          "copied again")
    print(f"home is now {args.box}; the old Maildir {src} is kept: delete it once you have checked the move")
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
    _account(store, args.address)
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
    from appliance.ratelimit.store import limits_db, read_daily_count

    if cfg.state.backend == "shared":  # the fleet's count, in Redis (docs/fleet.md)
        from appliance.ratelimit.shared import read_daily_count as shared_daily_count

        return shared_daily_count(cfg, account_key(address), time.time())
    # As the relay last wrote it: at most one batch (store.BATCH_INTERVAL) behind.
    return read_daily_count(limits_db(cfg), account_key(address), time.time())


def _limit_arg(value: str | None, parse: Callable[[str], int], current: int | None, option: str) -> int | None:
    if value is None:
        return current
    if value == "default":
        return None
    try:
        return parse(value)
    except ValueError as exc:
        raise CommandError(f"{option} {value}: {exc}") from None


def _count(value: str) -> int:
    if not value.isdigit():
        raise ValueError("not a whole number")
    return int(value)


@_guard
def cmd_quota(args: argparse.Namespace) -> int:
    store, cfg = _store(args)
    a = _account(store, args.address)
    if args.storage is not None or args.messages is not None:
        storage = _limit_arg(args.storage, parse_size, a.quota_storage, "--storage")
        messages = _limit_arg(args.messages, _count, a.quota_messages, "--messages")
        store.set_quota(a.address, storage, messages)
        a = store.get(a.address)
        assert a is not None
    own = "own" if a.quota_storage is not None or a.quota_messages is not None else f"class {a.limit_class}"
    if cfg.fleet.home_of(a.home):  # the Maildir, hence the usage, is on the home box
        limits = limits_for(a, cfg.limits.classes)
        storage = format_size(limits.storage) if limits.storage else "unlimited"
        messages = str(limits.messages) if limits.messages else "unlimited"
        print(f"{a.address}: quota {storage}, {messages} messages ({own}); its Maildir and usage are on its "
              f"home box {a.home}: run `appliance user quota` there")
        return 0
    limits, used = _quota_of(cfg, a)
    print(f"{a.address}: quota {quota_text(limits, used)} ({own})")
    return 0


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
