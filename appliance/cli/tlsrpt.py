"""`appliance tlsrpt send [--date YYYY-MM-DD]`: queue the day's TLS-RPT reports (RFC 8460).

For each policy domain with results counted that UTC day (default: yesterday), the
``_smtp._tls.DOMAIN`` TXT record (RFC 8460 3) names where reports go; one report per
``rua=mailto:`` address is stored in the spool like any outgoing mail (a running relay
is told to pick it up; otherwise it goes at the relay's next start) and remembered as
sent, so running the command twice sends nothing twice. ``https:`` rua are not built.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import secrets
from pathlib import Path

from appliance.cli import CommandError, config_from
from appliance.config import Config
from appliance.tlspolicy import tlsrpt
from appliance.tlspolicy.dnssec import LookupFailed, lookup, txt_strings, validating_resolver


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("tlsrpt", help="TLS-RPT (RFC 8460) aggregate reports of outbound TLS")
    ts = p.add_subparsers(dest="tlsrpt_cmd", metavar="ACTION", required=True)
    sp = ts.add_parser("send", help="queue the reports of one UTC day (default: yesterday)")
    sp.add_argument("--date", default="", help="YYYY-MM-DD (UTC)")
    sp.set_defaults(func=cmd_send)


def _day(text: str) -> str:
    if not text:
        return (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).strftime("%Y-%m-%d")
    try:
        return dt.datetime.strptime(text, "%Y-%m-%d").strftime("%Y-%m-%d")
    except ValueError:
        raise CommandError(f"--date {text!r}: not YYYY-MM-DD") from None


def cmd_send(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    day = _day(args.date)
    db = tlsrpt.db_path(cfg.paths.state_dir)
    if not Path(db).exists():
        print(f"{day}: no TLS results counted")
        return 0
    for line in asyncio.run(send_day(cfg, db, day)):
        print(line)
    return 0


async def send_day(cfg: Config, db: str, day: str) -> list[str]:
    from appliance.spool.spool import Spool  # only this command needs the spool

    res = validating_resolver(cfg.relay.outbound.resolver)
    out: list[str] = []
    spool = Spool(Path(cfg.paths.spool_dir))
    try:
        for domain in tlsrpt.domains(db, day):
            try:
                ruas = tlsrpt.ruas(txt_strings((await lookup(res, f"_smtp._tls.{domain}", "TXT")).records))
            except LookupFailed as exc:
                out.append(f"{domain}: not sent, {exc} (run again later)")
                continue
            if not ruas:
                out.append(f"{domain}: publishes no TLS-RPT mailto: address")
                continue
            for rua in ruas:
                if tlsrpt.was_sent(db, day, domain, rua):
                    out.append(f"{domain}: already sent to {rua}")
                    continue
                report_id = f"{day}.{secrets.token_hex(6)}@{cfg.box.hostname}"
                report = tlsrpt.build(db, day, domain, organization=cfg.box.hostname,
                                      contact=f"mailto:{cfg.box.postmaster_address}", report_id=report_id)
                data = tlsrpt.message(report, domain=domain, submitter=cfg.box.hostname,
                                      sender=cfg.box.postmaster_address, rua=rua)
                qid = await spool.store(cfg.box.postmaster_address, [rua], data, {"tlsrpt": domain})
                spool.request("retry", qid)  # a running relay picks it up; else its next start does
                tlsrpt.mark_sent(db, day, domain, rua, report_id)
                out.append(f"{domain}: report {report_id} queued as {qid} for {rua}")
    finally:
        spool.close()
    return out
