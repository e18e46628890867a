"""The operator's pages: health, queue, accounts, limits, graphs, DNS/TLS self-checks, audit log.

Queue actions call the same functions as `appliance queue` (appliance/cli/queue.py), account actions
the same store methods as `appliance user`; each change is written to the audit log with its result.
"""

from __future__ import annotations

import math
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.accounts import Account, AccountError
from appliance.addresses import AddressError, domain_of, normalize_address
from appliance.cli import CommandError
from appliance.console import health, limits, timeseries
from appliance.console.sessions import Session
from services.console import svg
from services.console.web import Req, Resp, redirect

if TYPE_CHECKING:
    from appliance.spool.spool import Spool
    from services.console.app import Console

MAX_QUEUE_ROWS = 500  # a page lists at most this many messages (search narrows it)


def page_health(c: Console, req: Req, s: Session) -> Resp:
    return c.page("health.html", "Health", s, st=health.collect(c.cfg))


# --- queue ------------------------------------------------------------------------------------------


# The queue code (appliance/cli/queue.py and the delivery manager it reads entries with) is imported
# at the first queue page: about 8 MB the idle console does not need to hold.
def _spool(c: Console) -> Spool:
    from appliance.spool.spool import Spool

    return Spool(Path(c.cfg.paths.spool_dir))


def page_queue(c: Console, req: Req, s: Session) -> Resp:
    from appliance.cli.queue import describe

    spool, q = _spool(c), req.query.get("q", "").strip().lower()[:200]
    rows: list[dict[str, Any]] = []
    for qid in spool.ids():
        try:
            d = describe(spool, qid)
        except CommandError:
            continue  # delivered or quarantined while we looked
        hay = " ".join([d["id"], d["sender"], *(r["address"] for r in d["recipients"])]).lower()
        if not q or q in hay:
            rows.append(d)
        if len(rows) >= MAX_QUEUE_ROWS:
            break
    return c.page("queue.html", "Queue", s, rows=rows, q=q, flash=req.query.get("msg", ""))


def page_queue_show(c: Console, req: Req, s: Session) -> Resp:
    from appliance.cli.queue import describe

    try:
        d = describe(_spool(c), req.query.get("id", ""))
    except CommandError as exc:
        return c.page("queue.html", "Queue", s, 404, rows=[], q="", flash=str(exc), flash_bad=True)
    return c.page("queue_show.html", f"Message {d['id']}", s, d=d)


def _queue_action(c: Console, req: Req, s: Session, action: str) -> Resp:
    from appliance.cli import queue as q

    qid = req.form.get("id", "")[:64]
    try:
        if action == "hold":
            result = q.hold_message(_spool(c), qid, by=s.login)
        elif action == "release":
            result = q.release_message(_spool(c), qid, by=s.login)
        else:
            result = (q.retry_message if action == "retry" else q.delete_message)(_spool(c), qid)
    except CommandError as exc:
        c.record(s, req, f"queue {action}", qid, f"failed: {exc}")
        return _back_to_queue(f"failed: {exc}")
    c.record(s, req, f"queue {action}", qid, result)
    return _back_to_queue(result)


def _back_to_queue(msg: str) -> Resp:
    from urllib.parse import urlencode

    return redirect("/queue?" + urlencode({"msg": msg}))


def post_queue_retry(c: Console, req: Req, s: Session) -> Resp:
    return _queue_action(c, req, s, "retry")


def post_queue_delete(c: Console, req: Req, s: Session) -> Resp:
    return _queue_action(c, req, s, "delete")


def post_queue_hold(c: Console, req: Req, s: Session) -> Resp:
    return _queue_action(c, req, s, "hold")


def post_queue_release(c: Console, req: Req, s: Session) -> Resp:
    return _queue_action(c, req, s, "release")


# --- accounts -------------------------------------------------------------------------------------


def _actions(a: Account) -> list[tuple[str, str]]:
    out = [("enable", "Enable") if a.disabled else ("disable", "Disable"), ("password", "Reset password")]
    out.append(("release", "Release") if a.held else ("hold", "Hold"))
    return out


def page_accounts(c: Console, req: Req, s: Session, flash: str = "", bad: bool = False,
                  new_password: tuple[str, str] | None = None, status: int = 200) -> Resp:
    from appliance.cli.user import quota_text
    from appliance.mailstore import maildir_path
    from appliance.mailstore.quota import limits_for, usage

    accounts = c.accounts.list()
    quotas = {a.address: quota_text(limits_for(a, c.cfg.limits.classes),
                                    tuple(usage(maildir_path(c.cfg.paths.mail_dir, a.address))))
              for a in accounts}
    return c.page("accounts.html", "Accounts", s, status, accounts=accounts, quotas=quotas, actions=_actions,
                  classes=list(c.cfg.limits.classes), flash=flash or req.query.get("msg", ""), flash_bad=bad,
                  new_password=new_password)


def post_account(c: Console, req: Req, s: Session) -> Resp:
    action = req.path.rstrip("/").rsplit("/", 1)[-1]
    address = req.form.get("address", "").strip()[:320]
    new_password: tuple[str, str] | None = None
    try:
        if action == "add":
            addr = normalize_address(address)
            if domain_of(addr) not in c.cfg.box.domains:
                raise AccountError(f"{addr}: domain is not one of this box's domains ({', '.join(c.cfg.box.domains)})")
            limit_class = req.form.get("limit_class", "default")
            if limit_class not in c.cfg.limits.classes:
                raise AccountError(f"class {limit_class}: no such limit class in limits.classes")
            pw = secrets.token_urlsafe(12)
            acct = c.accounts.add(addr, pw, limit_class)
            if req.form.get("admin"):
                c.accounts.set_admin(acct.address, True)
            _make_maildir(c, acct.address)
            new_password, result = (acct.address, pw), f"added {acct.address}" + (" (admin)" if req.form.get("admin") else "")
        elif action in ("disable", "enable"):
            c.accounts.set_disabled(address, action == "disable")
            if action == "disable":
                c.sessions.delete_login(normalize_address(address))
            result = f"{action}d {address}"
        elif action == "password":
            pw = secrets.token_urlsafe(12)
            c.accounts.set_password(address, pw)
            c.sessions.delete_login(normalize_address(address))
            new_password, result = (normalize_address(address), pw), f"password reset for {address}"
        elif action == "hold":
            reason = " ".join(req.form.get("reason", "").split())[:200] or "held from the console"
            if c.accounts.get(address) is None:
                raise AccountError(f"no account {address}")
            result = f"held {address}: {reason}" if c.accounts.hold(address, f"{reason} (by {s.login})") \
                else f"{address} was already held"
        elif action == "quota":
            result = _set_quota(c, req, address)
        elif action == "limits":
            result = _set_limits(c, req, address)
        elif action == "release":
            from appliance.ratelimit.brake import release

            # As `appliance user release`: lifts the hold and resets the brake's window.
            release(c.cfg, c.accounts, address)
            result = f"released {address}"
        else:
            return c.page("accounts.html", "Accounts", s, 404, accounts=[], quotas={}, actions=_actions, classes=[],
                          flash=f"no action {action}", flash_bad=True, new_password=None)
    except (AccountError, AddressError, CommandError) as exc:
        c.record(s, req, f"account {action}", address, f"failed: {exc}")
        return page_accounts(c, req, s, flash=f"failed: {exc}", bad=True, status=400)
    c.record(s, req, f"account {action}", address, result)
    if new_password:  # shown once, on this answer only (never in a URL or the log)
        return page_accounts(c, req, s, flash=result, new_password=new_password)
    from urllib.parse import urlencode

    return redirect("/accounts?" + urlencode({"msg": result}))


def _existing(c: Console, address: str) -> Account:
    a = c.accounts.get(address)
    if a is None:
        raise AccountError(f"no account {address}")
    return a


def _set_quota(c: Console, req: Req, address: str) -> str:
    """As `appliance user quota --storage S --messages N`: a value, 0 for unlimited, "default" for the
    class's; a field left out or empty keeps what is set."""
    from appliance.cli.user import _count, _limit_arg
    from appliance.mailstore.quota import parse_size

    a = _existing(c, address)
    storage = _limit_arg(req.form.get("storage", "").strip()[:40] or None, parse_size, a.quota_storage, "storage")
    messages = _limit_arg(req.form.get("messages", "").strip()[:40] or None, _count, a.quota_messages, "messages")
    c.accounts.set_quota(a.address, storage, messages)
    shown = [f"{name} {'default' if v is None else v}" for name, v in (("storage", storage), ("messages", messages))]
    return f"quota of {a.address} set to {', '.join(shown)}"


def _set_limits(c: Console, req: Req, address: str) -> str:
    """As `appliance user limits [--class C] [--per-minute R --burst B [--per-day D] | --clear]`: both rate
    fields empty clears the account's own override (back to its class's limits)."""
    from appliance.accounts import LimitOverride

    a = _existing(c, address)
    limit_class = req.form.get("limit_class", a.limit_class)
    if limit_class not in c.cfg.limits.classes:
        raise AccountError(f"class {limit_class[:40]}: no such limit class in limits.classes")
    fields = {k: req.form.get(k, "").strip()[:40] for k in ("per_minute", "burst", "per_day")}
    try:
        per_minute = float(fields["per_minute"]) if fields["per_minute"] else None
        burst = int(fields["burst"]) if fields["burst"] else None
        per_day = int(fields["per_day"]) if fields["per_day"] else None
    except ValueError:
        raise AccountError(f"limits {fields}: per minute is a number, burst and per day whole numbers") from None
    if per_minute is not None and not math.isfinite(per_minute):
        raise AccountError(f"per minute {fields['per_minute']}: not a finite number")
    if (per_minute is None) != (burst is None):
        raise AccountError("per minute and burst go together (both empty: the class's limits)")
    if per_minute is None and per_day is not None:
        raise AccountError("a per-day limit needs per minute and burst too")
    override = LimitOverride(per_minute, burst, per_day) if per_minute is not None and burst is not None else None
    # The override is checked (and may be refused) before the class changes: nothing half-done.
    c.accounts.set_limits(a.address, override)
    if limit_class != a.limit_class:
        c.accounts.set_limit_class(a.address, limit_class)
    own = f"{per_minute:g}/min, burst {burst}" + (f", {per_day}/day" if per_day is not None else "") \
        if override else "none (the class's)"
    return f"limits of {a.address}: class {limit_class}, own limits {own}"


def _make_maildir(c: Console, address: str) -> None:
    from appliance.cli.user import _make_maildir as make

    make(c.cfg, address)


# --- limits, graphs, doctor, audit -----------------------------------------------------------------


def page_limits(c: Console, req: Req, s: Session) -> Resp:
    return c.page("limits.html", "Limits", s, held=c.accounts.held(), hits=limits.recent_hits(c.cfg))


RANGES = {"24h": (24 * 60, 1), "7d": (7 * 24 * 60, 60)}  # minutes shown, minutes per bar


def page_graphs(c: Console, req: Req, s: Session) -> Resp:
    rng = req.query.get("range", "24h")
    span, step = RANGES.get(rng, RANGES["24h"])
    now = time.time()
    end = int(now // 60)
    start = end - span + 1
    live = timeseries.read_now(c.cfg)
    last_minute, last_sources = c.series.last_sample()
    graphs = []
    for g in timeseries.GRAPHS:
        per = c.series.points(g, start, live, now)
        merged: dict[int, float] = {}
        for seq in per.values():
            for m, v in seq:
                merged[m] = merged.get(m, 0.0) + v
        pts = timeseries.bucket(sorted(merged.items()), step, g.counter)
        if g.counter:
            parts = [(k.partition(":")[2] or k, f"{timeseries.total(v):g}") for k, v in sorted(per.items())]
            summary = f"total {timeseries.total(pts):g} in the last {rng}"
            measure = "total"
        else:
            parts = [(k, f"{max((v for _, v in seq), default=0):g}") for k, seq in sorted(per.items())]
            latest = live.values.get(g.key)
            summary = f"now {latest:g}, highest {max((v for _, v in pts), default=0):g}" if latest is not None \
                else f"highest {max((v for _, v in pts), default=0):g}"
            measure = "highest"
        graphs.append({"key": g.key, "title": g.title, "summary": summary, "parts": parts, "measure": measure,
                       "svg": svg.chart(g.title, pts, start - start % step, end, step)})
    title = "Graphs, last 24 hours" if rng == "24h" else "Graphs, last 7 days"
    return c.page("graphs.html", title, s, graphs=graphs, missing=live.missing,
                  last=(svg.minute_label(last_minute) if last_minute else "never", last_sources))


def page_doctor(c: Console, req: Req, s: Session) -> Resp:
    findings, error = health.doctor(c.cfg)
    return c.page("doctor.html", "DNS and TLS self-checks", s, findings=findings, error=error)


def page_audit(c: Console, req: Req, s: Session) -> Resp:
    return c.page("audit.html", "Audit log", s, entries=c.audit.recent())


ROUTES = {
    ("GET", "/"): page_health,
    ("GET", "/queue"): page_queue,
    ("GET", "/queue/show"): page_queue_show,
    ("POST", "/queue/retry"): post_queue_retry,
    ("POST", "/queue/delete"): post_queue_delete,
    ("POST", "/queue/hold"): post_queue_hold,
    ("POST", "/queue/release"): post_queue_release,
    ("GET", "/accounts"): page_accounts,
    **{("POST", f"/accounts/{a}"): post_account for a in ("add", "disable", "enable", "password", "hold", "release",
                                                                   "quota", "limits")},
    ("GET", "/limits"): page_limits,
    ("GET", "/graphs"): page_graphs,
    ("GET", "/doctor"): page_doctor,
    ("GET", "/audit"): page_audit,
}
