"""`appliance practice ...`: the code of practice, checked (docs/practice.md).

    appliance practice show [--code FILE] [--json]
    appliance practice probe HOST[:PORT] [--member ID] [--repo REPO_DIR] [--domain D] [--source IP]
                             [--submission [HOST:]PORT --account LOGIN --password-stdin] [--json] [--out FILE]
    appliance [-c CONFIG] practice self-check [--json] [--out FILE]
    appliance practice verify REPORT [--repo REPO_DIR --member ID]

`probe` exits 0 when every control passed, 1 otherwise; `self-check` the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from appliance import hostport
from appliance.cli import CommandError, config_from
from appliance.practice import code as code_mod
from appliance.practice import report as report_mod
from appliance.practice.run import probe, target_for
from appliance.registry import model


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("practice", help="the consortium's code of practice: probe a relay, check this box")
    s = p.add_subparsers(dest="practice_command", metavar="ACTION", required=True)

    def with_code(q: argparse.ArgumentParser) -> None:
        q.add_argument("--code", type=Path, help="code of practice JSON (default: REPO_DIR/practice.json, else built in)")

    q = s.add_parser("show", help="print the code of practice: every control, its probe and its reason")
    with_code(q)
    q.add_argument("--repo", type=Path, help="operator directory whose practice.json to show")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_show)

    q = s.add_parser("probe", help="run the outside probes against a relay (never mails a third party)")
    q.add_argument("target", metavar="HOST[:PORT]")
    q.add_argument("--member", help="member id: check the certificate against its registry pins, use its domain")
    q.add_argument("--repo", type=Path, help="operator directory (draft registry and practice.json); "
                   "default: this box's verified registry")
    q.add_argument("--domain", help="the candidate's mail domain (default: the member's first domain)")
    q.add_argument("--source", help="local address to probe from (the probe's address in the registry)")
    q.add_argument("--submission", metavar="[HOST:]PORT", help="submission port for the authenticated From: test")
    q.add_argument("--account", metavar="LOGIN", help="the candidate's test account for the From: test")
    q.add_argument("--password-stdin", action="store_true", help="read the test account's password from stdin")
    q.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each reply (default 10)")
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.add_argument("--out", type=Path, help="also write the JSON report to this file")
    with_code(q)
    q.set_defaults(func=cmd_probe)

    q = s.add_parser("self-check", help="run the inside checks on this box; the report is signed with its TLS key")
    q.add_argument("--json", action="store_true")
    q.add_argument("--out", type=Path, help="also write the signed JSON report to this file")
    with_code(q)
    q.set_defaults(func=cmd_self_check)

    q = s.add_parser("verify", help="check a self-check report's signature (and the member's pins)")
    q.add_argument("report", type=Path)
    q.add_argument("--repo", type=Path, help="operator directory whose draft lists the member's pins")
    q.add_argument("--member", help="member id whose pins the signing key must match")
    q.set_defaults(func=cmd_verify)


def _code(args: argparse.Namespace) -> code_mod.Code:
    path = args.code
    if path is None and getattr(args, "repo", None) is not None and (args.repo / code_mod.TARGET_NAME).exists():
        path = args.repo / code_mod.TARGET_NAME
    try:
        return code_mod.load(path)
    except code_mod.CodeError as exc:
        raise CommandError(str(exc)) from None


def _registry(args: argparse.Namespace) -> model.Registry:
    try:
        if args.repo is not None:
            return model.loads((args.repo / "registry.json").read_bytes(), str(args.repo / "registry.json"))
        return model.load(config_from(args).registry_dir / "registry.json")
    except (OSError, model.RegistryError) as exc:
        raise CommandError(f"cannot read the registry: {exc}") from None


def _member(args: argparse.Namespace) -> model.Member | None:
    if not args.member:
        return None
    m = _registry(args).member(args.member)
    if m is None:
        raise CommandError(f"member {args.member}: not in the registry")
    return m


def _print(rep: dict[str, Any], as_json: bool, out: Path | None) -> int:
    text = json.dumps(rep, indent=2)
    if out is not None:
        out.write_text(text + "\n")
    if as_json:
        print(text)
    else:
        print(f"{rep['kind']} of {rep['target']} (code of practice {rep['code_of_practice']}, {rep['date']}):")
        for r in rep["results"]:
            print(f"  {r['status'].upper():8} {r['control']:18} {r['evidence']}")
        failed = [r["control"] for r in rep["results"] if r["status"] == "fail"]
        not_run = [r["control"] for r in rep["results"] if r["status"] == "not-run"]
        print("PASS" if report_mod.passes(rep) else "NOT PASSED:"
              + (f" failed {', '.join(failed)}" if failed else "") + (f"; not run {', '.join(not_run)}" if not_run else ""))
    return 0 if report_mod.passes(rep) else 1


def cmd_show(args: argparse.Namespace) -> int:
    c = _code(args)
    if args.json:
        print(json.dumps(code_mod.default_document() if args.code is None and args.repo is None
                         else json.loads((args.code or args.repo / code_mod.TARGET_NAME).read_text()), indent=2))
        return 0
    print(f"code of practice {c.version} (probe domain {c.probe_domain}):")
    for ctl in c.controls:
        print(f"  {ctl.id:18} {ctl.kind:8} {ctl.description}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    try:
        host, port = hostport.parse(args.target, "TARGET", default_port=25)
        submission = None
        if args.submission:  # [HOST:]PORT: the target's host when only a port is given
            submission = ((host, hostport.port(args.submission, "--submission")) if args.submission.isdigit()
                          else hostport.parse(args.submission, "--submission"))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    account = None
    if args.account:
        if not args.password_stdin:
            raise CommandError("--account needs --password-stdin (a password on the command line is visible to all)")
        account = (args.account, sys.stdin.readline().rstrip("\n"))
        if submission is None:
            raise CommandError("--account needs --submission [HOST:]PORT")
    code = _code(args)
    try:
        t = target_for(host, port, _member(args), args.domain, source=args.source, submission=submission,
                       account=account, timeout=args.timeout)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    return _print(probe(t, code), args.json, args.out)


def cmd_self_check(args: argparse.Namespace) -> int:
    from appliance.practice.selfcheck import run_all

    cfg = config_from(args)
    code = _code(args)
    rep = report_mod.make("self-check", code.version, cfg.box.hostname, cfg.box.member_id or None, run_all(cfg, code))
    try:
        rep = report_mod.sign(rep, cfg.tls.key)
    except report_mod.ReportError as exc:
        raise CommandError(str(exc)) from None
    return _print(rep, args.json, args.out)


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        rep = report_mod.load(args.report)
        pins = None
        if args.member:
            if args.repo is None:
                raise CommandError("--member needs --repo REPO_DIR")
            m = _member(args)
            assert m is not None
            pins = m.pins()
        spki = report_mod.verify(rep, pins)
    except report_mod.ReportError as exc:
        raise CommandError(f"{args.report}: {exc}") from None
    print(f"{args.report}: signature valid (key SPKI {spki}"
          + (f", pinned for member {args.member})" if pins is not None else ")")
          + f"; {'passes' if report_mod.passes(rep) else 'fails: ' + ', '.join(report_mod.failed(rep))}")
    return 0
