"""`appliance queue list | show ID | retry ID | delete ID | flush | hold ID | release ID`.

How requests reach a running relay: the relay's delivery manager holds an
flock on SPOOL/relay.lock. When it is held, `retry`, `delete` and `flush` drop a
request file into SPOOL/control/, which the relay polls every 0.5 s, and wait
until it has been taken. When no relay runs, `delete` removes the message
directly and `retry`/`flush` record "due now" in the message's log, so the
relay delivers it as soon as it starts.

`hold` and `release` are written to the message's outcome log first (fsynced: a hold survives a
relay restart or a crash, as the log is read at start-up), then the running relay is told, so that it
stops scheduling the message (an attempt already running finishes) or attempts it now.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.cli import CommandError, config_from
from appliance.delivery.manager import Entry, entry_from
from appliance.spool.format import SpooledMessage, SpoolFormatError
from appliance.spool.spool import QUEUE_ID, Spool

REQUEST_WAIT = 15.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("queue", help="inspect and act on the mail queue")
    qs = p.add_subparsers(dest="queue_cmd", metavar="ACTION", required=True)
    for verb, help_text, takes_id, has_json, func in _VERBS:
        vp = qs.add_parser(verb, help=help_text)
        if takes_id:
            vp.add_argument("id")
        if has_json:
            vp.add_argument("--json", action="store_true", help="machine-readable output")
        vp.set_defaults(func=func)


def _spool(args: argparse.Namespace) -> Spool:
    cfg = config_from(args)
    return Spool(Path(cfg.paths.spool_dir))


def _ts(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if t else "now"


def describe(spool: Spool, qid: str) -> dict[str, Any]:
    """One queued message as `queue show --json` prints it (also the web console's queue page)."""
    path = spool.path(qid)
    msg = _load(spool, qid, with_data=True)
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
        "next_attempt": "held" if e.held else _ts(e.next),
        "held": e.held,
        "meta": msg.meta,
        "headers": msg.data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("utf-8", "replace"),
    }


def cmd_list(args: argparse.Namespace) -> int:
    spool = _spool(args)
    rows = []
    for qid in spool.ids():
        try:
            d = describe(spool, qid)
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
              + ("held" if d["held"] else f"next {d['next_attempt']}"))
        for r in pending:
            print(f"    -> {r}")
    print(f"{len(rows)} message(s)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    d = describe(_spool(args), _check_id(args.id))
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"id:        {d['id']}\narrival:   {d['arrival']}\nsize:      {d['size']}\nsender:    <{d['sender']}>")
    print(f"attempts:  {d['attempts']} ({'held' if d['held'] else 'next ' + d['next_attempt']})")
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


def _load(spool: Spool, qid: str, *, with_data: bool) -> SpooledMessage:
    try:
        return spool.load(qid, with_data=with_data)
    except FileNotFoundError:
        raise CommandError(f"queue id {qid}: no such message in {spool.queue_dir}") from None
    except SpoolFormatError as exc:
        raise CommandError(f"queue id {qid}: corrupt queue file ({exc})") from None


def _entry(spool: Spool, qid: str) -> Entry:
    """The message's state as the delivery manager reads it at start-up (envelope and outcome log)."""
    return entry_from(_load(spool, qid, with_data=False), spool.read_log(qid))


def _mark_due(spool: Spool, qid: str) -> bool:
    e = _entry(spool, qid)
    if e.held:
        return False  # flush leaves held messages alone
    spool.append_log(qid, [{"e": "deferred", "attempts": e.attempts, "next": 0}])
    return True


def retry_message(spool: Spool, qid: str) -> str:
    """Retry one message now (this command and the web console); the line to show. CommandError if not queued."""
    qid = _queued_id(spool, qid)
    if _entry(spool, qid).held:
        raise CommandError(f"queue id {qid}: held; release it to attempt it (`appliance queue release {qid}`)")
    if spool.relay_running():
        _ask_relay(spool, "retry", qid)
        return f"{qid}: delivery attempt started"
    _mark_due(spool, qid)
    return f"{qid}: relay not running; will be attempted as soon as it starts"




def cmd_flush(args: argparse.Namespace) -> int:
    spool = _spool(args)
    if spool.relay_running():
        _ask_relay(spool, "flush")
        print("delivery attempts started for every queued message")
    else:
        marked = 0
        for qid in spool.ids():
            try:
                marked += _mark_due(spool, qid)
            except CommandError as exc:  # gone meanwhile, or corrupt: start-up recovery quarantines it
                print(f"skipped {exc}")
        print(f"relay not running; {marked} message(s) will be attempted as soon as it starts")
    return 0


def delete_message(spool: Spool, qid: str) -> str:
    """Delete one message (this command and the web console); the line to show. CommandError if not queued."""
    qid = _queued_id(spool, qid)
    if spool.relay_running():
        _ask_relay(spool, "delete", qid)
    else:
        spool.delete(qid)
    return f"{qid}: deleted"




def hold_message(spool: Spool, qid: str, by: str = "") -> str:
    """Hold one message (this command and the web console); the line to show. CommandError if not queued."""
    qid = _queued_id(spool, qid)
    if _entry(spool, qid).held:
        return f"{qid}: already held"
    # On disk first: from here on no start of the relay attempts it, whatever happens next.
    spool.append_log(qid, [{"e": "hold", "at": time.time(), **({"by": by} if by else {})}])
    if spool.relay_running():
        _ask_relay(spool, "hold", qid)
    return f"{qid}: held (not attempted until released)"


def release_message(spool: Spool, qid: str, by: str = "") -> str:
    """Release a held message (this command and the web console); the line to show."""
    qid = _queued_id(spool, qid)
    if not _entry(spool, qid).held:
        raise CommandError(f"queue id {qid}: not held")
    spool.append_log(qid, [{"e": "release", "at": time.time(), **({"by": by} if by else {})}])
    if spool.relay_running():
        _ask_relay(spool, "release", qid)
        return f"{qid}: released; delivery attempt started"
    return f"{qid}: released; relay not running, will be attempted as soon as it starts"


def _on_id(action: Callable[[Spool, str], str]) -> Callable[[argparse.Namespace], int]:
    """The command for a verb on one message: ACTION (shared with the web console) prints its line."""

    def cmd(args: argparse.Namespace) -> int:
        print(action(_spool(args), args.id))
        return 0

    return cmd


# (verb, help, takes an ID, has --json, handler), in the order `appliance queue --help` lists them.
_VERBS: tuple[tuple[str, str, bool, bool, Callable[[argparse.Namespace], int]], ...] = (
    ("list", "queued messages, oldest first", False, True, cmd_list),
    ("show", "one message: envelope, per-recipient state, headers", True, True, cmd_show),
    ("retry", "attempt delivery of one message now", True, False, _on_id(retry_message)),
    ("delete", "remove one message from the queue (no DSN is sent)", True, False, _on_id(delete_message)),
    ("flush", "attempt delivery of every queued message now", False, False, cmd_flush),
    ("hold", "keep one message queued without attempting it, until released", True, False, _on_id(hold_message)),
    ("release", "release a held message: attempt it now", True, False, _on_id(release_message)),
)
