"""`appliance registry ...`: the consortium operator's tools, and `sync --once` for a box.

Operator commands take the operator directory first (see appliance/registry/repo.py)::

    appliance registry init REPO_DIR [--keys-dir DIR] [--keys ROLE=N] [--threshold ROLE=M] [--expires ROLE=DAYS]
    appliance registry add-member REPO_DIR --id ID --domain D --relay HOST[:PORT]=CIDR[+CIDR] [--pin [HOST=]HEX|CERT.pem] ...
                                  (--probe-report REPORT.json | --without-probe)
    appliance registry probe-all REPO_DIR [--suspend-on-fail] [--publish] [--source IP] [--json]
    appliance registry update-member REPO_DIR ID [same options; each given one replaces the field]
    appliance registry suspend | reactivate | remove REPO_DIR ID
    appliance registry rotate-key REPO_DIR ROLE [--keys N] [--threshold M] [--replace KEYID]
    appliance registry publish REPO_DIR [--timestamp-only]
    appliance registry serve REPO_DIR [--host H] [--port P] [--tls-cert F --tls-key F]
    appliance registry show REPO_DIR [--published]

Member edits change the draft only; `publish` signs it.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from appliance.cli import CommandError, config_from
from appliance.hostport import parse as parse_hostport
from appliance.registry import repo as repo_mod


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("registry", help="the consortium registry: operator tools and `sync --once`")
    s = p.add_subparsers(dest="registry_command", metavar="ACTION", required=True)

    def op(name: str, help: str) -> argparse.ArgumentParser:
        q = s.add_parser(name, help=help)
        q.add_argument("repo_dir", metavar="REPO_DIR", help="the operator directory")
        q.add_argument("--keys-dir", action="append", type=Path, default=None,
                       help="directory holding private keys (repeatable; default: the one given to init)")
        return q

    q = op("init", "create a repository: keys for every role, root v1, an empty member list, first publication")
    q.add_argument("--keys", action="append", default=[], metavar="ROLE=N", help="number of keys for ROLE (default root=3, others 1)")
    q.add_argument("--threshold", action="append", default=[], metavar="ROLE=M", help="signatures required (default root=2, others 1)")
    q.add_argument("--expires", action="append", default=[], metavar="ROLE=DAYS",
                   help="days each role's metadata stays valid (default root=365 targets=30 snapshot=7 timestamp=7)")
    q.add_argument("--consortium", default="Email Service Consortium", help="consortium name")
    q.add_argument("--code-of-practice", default="", help="code of practice version the members follow")
    q.set_defaults(func=cmd_init)

    for name, help in (("add-member", "add a member to the draft"), ("update-member", "change a member in the draft")):
        q = op(name, help)
        if name == "add-member":
            q.add_argument("--id", required=True, help="member id (lower-case letters, digits, dashes)")
        else:
            q.add_argument("id", metavar="ID")
        q.add_argument("--name", help="display name")
        q.add_argument("--abuse", help="abuse contact address")
        q.add_argument("--domain", action="append", help="mail domain the member receives for (repeatable)")
        q.add_argument("--relay", action="append", metavar="HOST[:PORT]=CIDR[+CIDR]",
                       help="a relay host, its port (default 25) and the addresses it sends from (repeatable)")
        q.add_argument("--pin", action="append", metavar="[HOST=]HEX",
                       help="SPKI SHA-256 pin of a relay's certificate (64 hex digits, or a PEM certificate file); "
                       "applies to all relays without HOST=")
        q.add_argument("--no-pins", action="store_true", help="remove every pin")
        q.add_argument("--messages-per-minute", type=float, help="member message rate (code of practice)")
        q.add_argument("--burst", type=int, help="member burst")
        q.add_argument("--connections", type=int, help="concurrent connections from the member")
        q.add_argument("--suspended", action="store_true", help="add the member suspended" if name == "add-member"
                       else argparse.SUPPRESS)
        if name == "add-member":
            q.add_argument("--probe-report", type=Path, metavar="REPORT.json",
                           help="a passing `appliance practice probe --json` report of the candidate's relay (required)")
            q.add_argument("--without-probe", action="store_true",
                           help="admit without a probe report (recorded in the member's entry)")
        q.set_defaults(func=cmd_add_member if name == "add-member" else cmd_update_member)

    for name, help in (("suspend", "suspend a member (draft)"), ("reactivate", "reactivate a suspended member (draft)"),
                       ("remove", "remove a member (draft)")):
        q = op(name, help)
        q.add_argument("id", metavar="ID")
        q.set_defaults(func=cmd_member_status, action=name)

    q = op("rotate-key", "replace a role's keys, sign the next root with old and new keys, and publish")
    q.add_argument("role", metavar="ROLE", choices=repo_mod.ROLES)
    q.add_argument("--keys", type=int, default=None, help="number of new keys (default: as many as are replaced)")
    q.add_argument("--threshold", type=int, default=None, help="new threshold (default: unchanged)")
    q.add_argument("--replace", action="append", metavar="KEYID", help="replace only this key (id prefix; repeatable)")
    q.add_argument("--no-publish", action="store_true", help="write the new root only")
    q.set_defaults(func=cmd_rotate)

    q = op("probe-all", "probe every active member's relays against the code of practice; report drift")
    q.add_argument("--suspend-on-fail", action="store_true", help="suspend (in the draft) a member that fails a control")
    q.add_argument("--publish", action="store_true", help="publish the draft afterwards (makes suspensions effective)")
    q.add_argument("--source", help="local address to probe from (the probe's address in the registry)")
    q.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each reply (default 10)")
    q.add_argument("--json", action="store_true", help="print every report as JSON")
    q.set_defaults(func=cmd_probe_all)

    q = op("publish", "validate and sign the draft, write the static repository (bumps versions and expiries)")
    q.add_argument("--timestamp-only", action="store_true", help="re-sign only the timestamp (keeps it fresh)")
    q.set_defaults(func=cmd_publish)

    q = op("serve", "serve REPO_DIR/public over HTTP(S) (Twisted web), for development and tests")
    q.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    q.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 lets the OS pick)")
    q.add_argument("--tls-cert", help="PEM certificate: serve HTTPS")
    q.add_argument("--tls-key", help="PEM private key for --tls-cert")
    q.set_defaults(func=cmd_serve)

    q = op("show", "a table of the draft's members and the published versions")
    q.add_argument("--published", action="store_true", help="show the published registry instead of the draft")
    q.add_argument("--json", action="store_true", help="print the registry JSON")
    q.set_defaults(func=cmd_show)

    q = s.add_parser("sync", help="this box: one TUF update of the registry (exit 1 with the reason if refused)")
    q.add_argument("--once", action="store_true", required=True, help="one round, then exit")
    q.set_defaults(func=cmd_sync)


@contextmanager
def _refused() -> Iterator[None]:
    """A RepoError (one line saying why) becomes the command's error."""
    try:
        yield
    except repo_mod.RepoError as exc:
        raise CommandError(str(exc)) from None


def _repo(args: argparse.Namespace) -> repo_mod.OperatorRepo:
    with _refused():
        return repo_mod.OperatorRepo(args.repo_dir, args.keys_dir)


def _role_map(items: list[str], flag: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        role, sep, n = it.partition("=")
        if not sep or role not in repo_mod.ROLES or not n.isdigit():
            raise CommandError(f"{flag} {it}: expected ROLE=N with ROLE one of {', '.join(repo_mod.ROLES)}")
        out[role] = int(n)
    return out


def cmd_init(args: argparse.Namespace) -> int:
    keys_dir = args.keys_dir[0] if args.keys_dir else None
    with _refused():
        r = repo_mod.init_repo(
            args.repo_dir, keys_dir, keys=_role_map(args.keys, "--keys"),
            thresholds=_role_map(args.threshold, "--threshold"), expiry_days=_role_map(args.expires, "--expires"),
            consortium=args.consortium, code_of_practice=args.code_of_practice)
    print(f"initialised {r.dir}")
    print(f"  private keys:  {r.keys_dirs[0]} (0600; keep them offline, never in {r.public_dir})")
    print(f"  published:     {r.public_dir} (serve it: `appliance registry serve {r.dir}`)")
    print(f"  boxes pin:     {r.metadata_dir / '1.root.json'} (registry.root)")
    return 0


def _parse_relay(spec: str) -> dict[str, Any]:
    hostport, sep, addrs = spec.partition("=")
    if not sep or not addrs:
        raise CommandError(f"--relay {spec}: expected HOST[:PORT]=CIDR[+CIDR...]")
    try:
        host, port = parse_hostport(hostport, "--relay", default_port=25)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    nets = []
    for a in addrs.split("+"):
        try:
            nets.append(str(ipaddress.ip_network(a if "/" in a else a + ("/128" if ":" in a else "/32"), strict=True)))
        except ValueError as exc:
            raise CommandError(f"--relay {spec}: address {a}: {exc}") from None
    return {"host": host, "port": port, "addresses": nets, "spki_sha256": []}


def _pin_value(value: str) -> str:
    """64 hex digits as given, or the SPKI SHA-256 of a PEM certificate file (e.g. the member's cert.pem)."""
    if Path(value).is_file():
        from appliance.tlsfiles import load_cert, spki_sha256

        try:
            return spki_sha256(load_cert(value))
        except ValueError as exc:
            raise CommandError(f"--pin {value}: not a PEM certificate: {exc}") from None
    return value.lower()


def _apply_pins(relays: list[dict[str, Any]], pins: list[str] | None) -> None:
    for pin in pins or []:
        host, sep, value = pin.rpartition("=")
        value = _pin_value(value)
        targets = [r for r in relays if not sep or r["host"] == host]
        if sep and not targets:
            raise CommandError(f"--pin {pin}: no relay {host} in this member")
        for r in targets:
            if value not in r["spki_sha256"]:
                r["spki_sha256"].append(value)


def _member_fields(args: argparse.Namespace, existing: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("name", "abuse"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    if args.domain is not None:
        out["domains"] = [d.lower() for d in args.domain]
    relays = [_parse_relay(r) for r in args.relay] if args.relay else None
    if relays is None and (args.pin or args.no_pins) and existing is not None:
        relays = json.loads(json.dumps(existing.get("relays", [])))
        if args.no_pins:
            for r in relays:
                r["spki_sha256"] = []
    if relays is not None:
        _apply_pins(relays, args.pin)
        out["relays"] = relays
    lim_given = [x is not None for x in (args.messages_per_minute, args.burst, args.connections)]
    if any(lim_given):
        lim = dict((existing or {}).get("limits") or {})
        if args.messages_per_minute is not None:
            lim["messages_per_minute"] = args.messages_per_minute
        if args.burst is not None:
            lim["burst"] = args.burst
        if args.connections is not None:
            lim["connections"] = args.connections
        if "messages_per_minute" not in lim or "burst" not in lim:
            raise CommandError("limits need both --messages-per-minute and --burst")
        out["limits"] = lim
    return out


def _after_edit(r: repo_mod.OperatorRepo, what: str) -> int:
    print(f"{what}; draft {r.draft_path} updated. Sign it with `appliance registry publish {r.dir}`.")
    return 0


def cmd_add_member(args: argparse.Namespace) -> int:
    r = _repo(args)
    fields = _member_fields(args, None)
    if not fields.get("domains"):
        raise CommandError("add-member: at least one --domain is required")
    if not fields.get("relays"):
        raise CommandError("add-member: at least one --relay is required")
    member = {"id": args.id, "name": fields.get("name", args.id), "status": "suspended" if args.suspended else "active",
              "abuse": fields.get("abuse", f"abuse@{fields['domains'][0]}"), "domains": fields["domains"],
              "relays": fields["relays"]}
    if "limits" in fields:
        member["limits"] = fields["limits"]
    member["practice"] = _admission(r, args, member)
    with _refused():
        r.add_member(member)
    return _after_edit(r, f"member {args.id} added ({member['status']})")


def _admission(r: repo_mod.OperatorRepo, args: argparse.Namespace, member: dict[str, Any]) -> dict[str, Any]:
    """The member entry's `practice` record, or CommandError if the candidate is not admissible."""
    import datetime as dt

    from appliance.practice import report as report_mod

    if args.without_probe:
        if args.probe_report:
            raise CommandError("add-member: give --probe-report or --without-probe, not both")
        return {"admitted": report_mod.now_iso(), "probe": "none (--without-probe)"}
    if not args.probe_report:
        raise CommandError(f"add-member {args.id}: refused: no probe report (run `appliance practice probe "
                           "HOST:PORT --domain D --json --out REPORT.json`, then --probe-report REPORT.json; "
                           "or --without-probe)")
    with _refused():
        code = r.practice()
    try:
        rep = report_mod.load(args.probe_report)
        when = report_mod.date_of(rep)
    except report_mod.ReportError as exc:
        raise CommandError(f"add-member {args.id}: refused: {exc}") from None
    where = f"add-member {args.id}: refused: {args.probe_report}"
    if rep.get("kind") != "probe":
        raise CommandError(f"{where}: not a probe report (kind {rep.get('kind')!r})")
    if rep.get("code_of_practice") != code.version:
        raise CommandError(f"{where}: made under code of practice {rep.get('code_of_practice')!r}, not {code.version}")
    missing = set(code.ids("outside")) - {x.get("control") for x in rep["results"]}
    if missing:
        raise CommandError(f"{where}: does not cover {', '.join(sorted(missing))}")
    if not report_mod.passes(rep):
        raise CommandError(f"{where}: controls not passed: {', '.join(report_mod.failed(rep))}")
    relays = {f"{x['host']}:{x['port']}" for x in member["relays"]}
    if rep.get("target") not in relays:
        raise CommandError(f"{where}: probed {rep.get('target')}, which is not one of the relays {', '.join(sorted(relays))}")
    if rep.get("observed", {}).get("domain") not in member["domains"]:
        raise CommandError(f"{where}: probed domain {rep.get('observed', {}).get('domain')!r} is not one of the member's")
    pins = {p for x in member["relays"] for p in x["spki_sha256"]}
    seen = rep.get("observed", {}).get("spki_sha256")
    if pins and seen not in pins:
        raise CommandError(f"{where}: the probed certificate's SPKI {seen} is not among the --pin values")
    age = dt.datetime.now(dt.UTC) - when
    if age > dt.timedelta(days=code.bound("max_report_age_days")) or age < -dt.timedelta(minutes=5):
        raise CommandError(f"{where}: dated {rep['date']}, older than {code.bound('max_report_age_days'):g} days")
    return {"admitted": report_mod.now_iso(), "code_of_practice": code.version,
            "report_sha256": report_mod.digest(rep), "report_date": rep["date"]}


def cmd_probe_all(args: argparse.Namespace) -> int:
    from appliance.practice.run import probe_members
    from appliance.registry import model

    r = _repo(args)
    with _refused():
        code = r.practice()
        reg = model.parse(r.draft())
    outcomes = probe_members(reg, code, source=args.source, timeout=args.timeout)
    from appliance.practice import report as report_mod

    drifted: set[str] = set()
    for o in outcomes:
        if args.json:
            print(json.dumps(o.report, indent=2))
        verdict = "ok" if not o.failed else f"FAILED {', '.join(o.failed)}"
        print(f"{o.member} {o.relay}: {verdict}")
        for res in o.report["results"]:
            if res["status"] == "fail":
                print(f"  {res['control']}: {res['evidence']}")
        if o.failed:
            drifted.add(o.member)
    with _refused():
        data = r.draft()
        for o in outcomes:
            entry = r._find(data, o.member)
            record = dict(entry.get("practice") or {})
            record["last_probe"] = {"date": o.report["date"], "report_sha256": report_mod.digest(o.report),
                                    "failed": o.failed}
            changes: dict[str, Any] = {"practice": record}
            if o.member in drifted and args.suspend_on_fail and entry.get("status") == "active":
                changes["status"] = "suspended"
                print(f"{o.member}: suspended (drifted from the code of practice)")
            r.update_member(o.member, changes)
            data = r.draft()
        if args.publish:
            pub = r.publish()
            print(f"published: targets v{pub.targets}")
    if not outcomes:
        print("no active member to probe")
    return 1 if drifted else 0


def cmd_update_member(args: argparse.Namespace) -> int:
    r = _repo(args)
    with _refused():
        existing = r._find(r.draft(), args.id)
        changes = _member_fields(args, existing)
        if not changes:
            raise CommandError("update-member: nothing to change (give --name, --domain, --relay, --pin, ...)")
        r.update_member(args.id, changes)
    return _after_edit(r, f"member {args.id} updated ({', '.join(sorted(changes))})")


def cmd_member_status(args: argparse.Namespace) -> int:
    r = _repo(args)
    with _refused():
        if args.action == "remove":
            r.remove_member(args.id)
            done = "removed"
        else:
            m = r._find(r.draft(), args.id)
            status = "suspended" if args.action == "suspend" else "active"
            if m.get("status") == status:
                raise CommandError(f"member {args.id}: already {status}")
            r.set_status(args.id, status)
            done = status
    return _after_edit(r, f"member {args.id} {done}")


def cmd_rotate(args: argparse.Namespace) -> int:
    r = _repo(args)
    with _refused():
        md = r.rotate_key(args.role, keys=args.keys, threshold=args.threshold, replace=args.replace)
        print(f"root version {md.signed.version}: {args.role} keys "
              f"{', '.join(k[:16] for k in md.signed.roles[args.role].keyids)} "
              f"(threshold {md.signed.roles[args.role].threshold}); retired keys moved to {r.keys_dirs[0] / 'retired'}")
        if not args.no_publish:
            pub = r.publish()
            print(f"published: targets v{pub.targets}, snapshot v{pub.snapshot}, timestamp v{pub.timestamp}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    r = _repo(args)
    with _refused():
        pub = r.publish(timestamp_only=args.timestamp_only)
    print(f"published {r.public_dir}: root v{pub.root}, targets v{pub.targets}, snapshot v{pub.snapshot}, "
          f"timestamp v{pub.timestamp}; expires {pub.expires.isoformat()}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    r = _repo(args)
    with _refused():
        reg = r.published_registry() if args.published else r.draft()
        pub = r.published()
    if reg is None:
        raise CommandError("nothing published yet")
    if args.json:
        print(json.dumps(reg, indent=2))
        return 0
    print(f"{reg.get('consortium', '')} (code of practice {reg.get('code_of_practice') or '-'}), "
          f"{'published' if args.published else 'draft'}:")
    print(repo_mod.member_table(reg))
    if pub:
        same = r.published_registry() == r.draft()
        print(f"published: root v{pub.root}, targets v{pub.targets}, expires {pub.expires.isoformat()}"
              + ("" if same else "  (draft has unpublished changes)"))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from twisted.internet import endpoints, reactor, ssl
    from twisted.web import resource, server, static

    r = _repo(args)

    class NoListing(static.File):
        """Files only: the tree is public, but a directory listing is noise."""

        def directoryListing(self) -> resource.Resource:
            return resource.NoResource()

    site = server.Site(NoListing(str(r.public_dir)))
    v6 = ":" in args.host
    if args.tls_cert:
        if not args.tls_key:
            raise CommandError("--tls-cert needs --tls-key")
        factory = ssl.DefaultOpenSSLContextFactory(args.tls_key, args.tls_cert)
        ep: Any = endpoints.SSL4ServerEndpoint(reactor, args.port, factory, interface=args.host)
        scheme = "https"
    else:
        ep = (endpoints.TCP6ServerEndpoint if v6 else endpoints.TCP4ServerEndpoint)(reactor, args.port, interface=args.host)
        scheme = "http"

    def listening(port: Any) -> None:
        host = f"[{args.host}]" if v6 else args.host
        print(f"serving {r.public_dir} at {scheme}://{host}:{port.getHost().port}/", flush=True)

    def failed(err: Any) -> None:
        print(f"appliance: serve: cannot listen on {args.host}:{args.port}: {err.getErrorMessage()}", file=sys.stderr)
        reactor.stop()  # type: ignore[attr-defined]

    ep.listen(site).addCallbacks(listening, failed)
    reactor.run()  # type: ignore[attr-defined]
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    import logging

    from appliance.registry.agent import run_round

    # The one line below is the report; the agent's log lines are for the service's log file.
    logging.basicConfig(level=logging.CRITICAL)
    res = run_round(config_from(args))
    if res.ok:
        print(res.message)
        return 0
    print(f"appliance: registry sync: {res.message}", file=sys.stderr)
    return 1
