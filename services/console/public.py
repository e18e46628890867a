"""What the console serves to mail clients and customers: MTA-STS policy, Thunderbird autoconfig,
Outlook Autodiscover (no login), and the customer page (own password, Apple profile).

The documents themselves are written by appliance/publish/; they are imported lazily so a box
without that module answers 503 with a clear text instead of failing to start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.accounts import AccountError
from appliance.console.sessions import Session
from services.console.app import LIMITER_PROTOCOL
from services.console.web import Req, Resp, text

if TYPE_CHECKING:
    from services.console.app import Console

XML = "application/xml; charset=utf-8"


def _publish(module: str):  # type: ignore[no-untyped-def]
    import importlib

    try:
        return importlib.import_module(f"appliance.publish.{module}")
    except ImportError:
        return None


def mta_sts(c: Console, req: Req) -> Resp:
    mod = _publish("mtasts")
    if mod is None:
        return text(503, "MTA-STS policy not available: appliance.publish.mtasts is not installed")
    # RFC 8461 3.3: served as text/plain over HTTPS.
    return Resp(200, mod.policy_text(c.cfg), "text/plain; charset=utf-8")


def thunderbird(c: Console, req: Req) -> Resp:
    mod = _publish("autoconfig")
    if mod is None:
        return text(503, "autoconfig not available: appliance.publish.autoconfig is not installed")
    try:
        return Resp(200, mod.thunderbird_xml(c.cfg, req.query.get("emailaddress", "")), XML)
    except ValueError as exc:
        return text(400, f"autoconfig: {exc}")


def autodiscover(c: Console, req: Req) -> Resp:
    mod = _publish("autoconfig")
    if mod is None:
        return text(503, "autodiscover not available: appliance.publish.autoconfig is not installed")
    try:
        return Resp(200, mod.autodiscover_xml(c.cfg, req.body), XML)
    except ValueError as exc:
        return text(400, f"autodiscover: {exc}")


PUBLIC_ROUTES = {
    ("GET", "/.well-known/mta-sts.txt"): mta_sts,
    # Thunderbird asks https://autoconfig.DOMAIN/mail/config-v1.1.xml and the well-known path on DOMAIN.
    ("GET", "/.well-known/autoconfig/mail/config-v1.1.xml"): thunderbird,
    ("GET", "/mail/config-v1.1.xml"): thunderbird,
    # Outlook POSTs to /autodiscover/autodiscover.xml (any case; matched lower-cased by the router).
    ("POST", "/autodiscover/autodiscover.xml"): autodiscover,
}


# --- the customer's page ------------------------------------------------------------------------------


def page_account(c: Console, req: Req, s: Session, flash: str = "", bad: bool = False, status: int = 200) -> Resp:
    return c.page("account.html", f"Your account {s.login}", s, status, flash=flash or req.query.get("msg", ""),
                  flash_bad=bad)


def post_password(c: Console, req: Req, s: Session) -> Resp:
    current, new, again = (req.form.get(k, "") for k in ("current", "new", "again"))
    if new != again:
        return page_account(c, req, s, "The new passwords differ.", True, 400)
    # The current password again: a session left open on someone else's screen is not enough.
    # Guessing it is limited like any login (the one limiter).
    check = c.limiter.auth_check(req.client_ip, s.login, LIMITER_PROTOCOL)
    if not check.ok:
        c.record(s, req, "own password", s.login, f"refused: {check.code} {check.text}")
        return page_account(c, req, s, f"Not changed for now: {check.text}", True, 429 if check.limited else 503)
    if c.accounts.authenticate(s.login, current) is None:
        c.limiter.auth_fail(req.client_ip, s.login, LIMITER_PROTOCOL)
        c.record(s, req, "own password", s.login, "failed: wrong current password")
        return page_account(c, req, s, "The current password is wrong.", True, 403)
    try:
        c.accounts.set_password(s.login, new)
    except AccountError as exc:
        return page_account(c, req, s, f"Not changed: {exc}", True, 400)
    c.record(s, req, "own password", s.login, "changed")
    return page_account(c, req, s, "Your password was changed.")


def mobileconfig(c: Console, req: Req, s: Session) -> Resp:
    mod = _publish("autoconfig")
    if mod is None:
        return text(503, "profile not available: appliance.publish.autoconfig is not installed")
    try:
        body = mod.mobileconfig(c.cfg, s.login)
    except ValueError as exc:
        return text(400, f"profile: {exc}")
    name = s.login.replace("@", "_at_")
    return Resp(200, body, "application/x-apple-aspen-config",
                [("Content-Disposition", f'attachment; filename="{name}.mobileconfig"')])


CUSTOMER_ROUTES = {
    ("GET", "/account"): page_account,
    ("POST", "/account/password"): post_password,
    ("GET", "/account/mobileconfig"): mobileconfig,
}
