"""`appliance queue list | show ID | retry ID | delete ID | flush`.

How requests reach a running relay: the relay's delivery manager holds an
flock on SPOOL/relay.lock. When it is held, `retry`, `delete` and `flush` drop a
request file into SPOOL/control/, which the relay polls every 0.5 s, and wait
until it has been taken. When no relay runs, `delete` removes the message
directly and `retry`/`flush` record "due now" in the message's log, so the
relay delivers it as soon as it starts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from appliance.cli import CommandError, config_from
from appliance.delivery.manager import entry_from
from appliance.spool.format import SpoolFormatError
from appliance.spool.spool import QUEUE_ID, Spool

REQUEST_WAIT = 15.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("queue", help="inspect and act on the mail queue")
    qs = p.add_subparsers(dest="queue_cmd", metavar="ACTION", required=True)
    lp = qs.add_parser("list", help="queued messages, oldest first")
    lp.add_argument("--json", action="store_true", help="machine-readable output")
    lp.set_defaults(func=cmd_list)
    sp = qs.add_parser("show", help="one message: envelope, per-recipient state, headers")
    sp.add_argument("id")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_show)
    rp = qs.add_parser("retry", help="attempt delivery of one message now")
    rp.add_argument("id")
    rp.set_defaults(func=cmd_retry)
    dp = qs.add_parser("delete", help="remove one message from the queue (no DSN is sent)")
    dp.add_argument("id")
    dp.set_defaults(func=cmd_delete)
    fp = qs.add_parser("flush", help="attempt delivery of every queued message now")
    fp.set_defaults(func=cmd_flush)


def _spool(args: argparse.Namespace) -> Spool:
    cfg = config_from(args)
    return Spool(Path(cfg.paths.spool_dir))


def _ts(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if t else "now"


def _describe(spool: Spool, qid: str) -> dict[str, Any]:
    path = spool.path(qid)
    try:
        msg = spool.load(qid, with_data=True)
    except FileNotFoundError:
        raise CommandError(f"queue id {qid}: no such message in {spool.queue_dir}") from None
    except SpoolFormatError as exc:
        raise CommandError(f"queue id {qid}: corrupt queue file ({exc})") from None
    records = spool.read_log(qid)
    e = entry_from(msg, records)
    final = {str(r["r"]): r for r in records if "r" in r}
    return {
        "id": qid,
        "arrival": _ts(msg.arrival),
        "size": path.stat().st_size,
        "sender": msg.sender,
        "recipients": [
            {"address": r, "state": final[r]["s"] if r in final else "pending",
             "detail": final[r].get("t", "") if r in final else e.why.get(r, "")}
            for r in msg.recipients
        ],
        "attempts": e.attempts,
        "next_attempt": _ts(e.next),
        "meta": msg.meta,
        "headers": msg.data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("utf-8", "replace"),
    }


def cmd_list(args: argparse.Namespace) -> int:
    spool = _spool(args)
    rows = []
    for qid in spool.ids():
        try:
            d = _describe(spool, qid)
        except CommandError:
            continue  # delivered or quarantined while we looked
        rows.append(d)
    if args.json:
        print(json.dumps([{k: v for k, v in d.items() if k != "headers"} for d in rows], indent=2))
        return 0
    if not rows:
        print("queue is empty")
        return 0
    for d in rows:
        pending = [r["address"] for r in d["recipients"] if r["state"] == "pending"]
        print(f"{d['id']}  {d['arrival']}  {d['size']:>9}  <{d['sender']}>  attempts {d['attempts']}, "
              f"next {d['next_attempt']}")
        for r in pending:
            print(f"    -> {r}")
    print(f"{len(rows)} message(s)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    d = _describe(_spool(args), _check_id(args.id))
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"id:        {d['id']}\narrival:   {d['arrival']}\nsize:      {d['size']}\nsender:    <{d['sender']}>")
    print(f"attempts:  {d['attempts']} (next {d['next_attempt']})")
    for r in d["recipients"]:
        print(f"recipient: {r['address']}  {r['state']}  {r['detail']}")
    print("\n" + d["headers"])
    return 0


def _check_id(qid: str) -> str:
    if not QUEUE_ID.match(qid):
        raise CommandError(f"queue id {qid!r}: not a queue id (see `appliance queue list`)")
    return qid


def _queued_id(spool: Spool, qid: str) -> str:
    """QID, checked to be a queue id of a message in SPOOL's queue."""
    if not spool.path(_check_id(qid)).exists():
        raise CommandError(f"queue id {qid}: no such message in {spool.queue_dir}")
    return qid


def _ask_relay(spool: Spool, action: str, qid: str = "") -> None:
    req = spool.request(action, qid)
    deadline = time.monotonic() + REQUEST_WAIT
    while req.exists():
        if time.monotonic() > deadline:
            req.unlink(missing_ok=True)
            raise CommandError(f"the relay did not take the {action} request within {REQUEST_WAIT:g} s")
        time.sleep(0.1)


def _mark_due(spool: Spool, qid: str) -> None:
    try:
        msg = spool.load(qid, with_data=False)
    except FileNotFoundError:
        raise CommandError(f"queue id {qid}: no such message in {spool.queue_dir}") from None
    except SpoolFormatError as exc:
        raise CommandError(f"queue id {qid}: corrupt queue file ({exc})") from None
    e = entry_from(msg, spool.read_log(qid))
    spool.append_log(qid, [{"e": "deferred", "attempts": e.attempts, "next": 0}])


def cmd_retry(args: argparse.Namespace) -> int:
    spool = _spool(args)
    qid = _queued_id(spool, args.id)
    if spool.relay_running():
        _ask_relay(spool, "retry", qid)
        print(f"{qid}: delivery attempt started")
    else:
        _mark_due(spool, qid)
        print(f"{qid}: relay not running; will be attempted as soon as it starts")
    return 0


def cmd_flush(args: argparse.Namespace) -> int:
    spool = _spool(args)
    if spool.relay_running():
        _ask_relay(spool, "flush")
        print("delivery attempts started for every queued message")
    else:
        marked = 0
        for qid in spool.ids():
            try:
                _mark_due(spool, qid)
                marked += 1
            except CommandError as exc:  # gone meanwhile, or corrupt: start-up recovery quarantines it
                print(f"skipped {exc}")
        print(f"relay not running; {marked} message(s) will be attempted as soon as it starts")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    spool = _spool(args)
    qid = _queued_id(spool, args.id)
    if spool.relay_running():
        _ask_relay(spool, "delete", qid)
    else:
        spool.delete(qid)
    print(f"{qid}: deleted")
    return 0
