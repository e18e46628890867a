"""The console's routes: login and sessions, CSRF on every POST, the audit log, the public resources.

Admin pages are in `pages.py`, the customer page and autoconfig in `public.py`. Every handler runs in
a pool thread (web.Dispatcher) and gets a `Req`; nothing here touches the reactor.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.accounts import AccountStore
from appliance.config import Config
from appliance.console import db_path
from appliance.console.audit import AuditLog
from appliance.console.sessions import LIFETIME, LoginTokens, Session, Sessions, csrf_ok
from appliance.console.timeseries import TimeSeries
from appliance.submitclient import SubmitClient
from services.console.web import Req, Resp, cookie, redirect, text

if TYPE_CHECKING:
    import jinja2

SESSION_COOKIE = "console_session"
PRE_LOGIN_COOKIE = "console_pre"
STATIC = Path(__file__).parent / "static"
# The limiter's protocol label for console logins (services/relay/internal.py AUTH_PROTOCOLS): the
# relay's log and metrics name the console as the entry; the counts are shared with SMTP, IMAP and POP.
LIMITER_PROTOCOL = "console"

Route = Callable[["Console", Req, Session], Resp]


def _ts(value: float | None) -> str:
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if value else ""


# Imported at the first page, not at start: an idle console only samples counters and answers the
# well-known names, and Jinja2 and the admin pages (appliance.status, supervision, tlspolicy) hold
# about 3 MB (docs/benchmarks.md, idle memory). missing_dependencies() keeps a missing one a start-up error.
LAZY_DEPENDENCIES = ("jinja2",)


def missing_dependencies() -> list[str]:
    """The packages of LAZY_DEPENDENCIES that are not installed (the console refuses to start without them)."""
    return [name for name in LAZY_DEPENDENCIES if importlib.util.find_spec(name) is None]


def open_store(cfg: Config) -> Any:
    """The accounts store of `state.backend` where that exists (appliance.accounts.open_accounts), else SQLite."""
    try:
        from appliance.accounts import open_accounts  # type: ignore[attr-defined]
    except ImportError:
        return AccountStore(cfg.paths.accounts_db)
    return open_accounts(cfg)


class Console:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        db = db_path(cfg)
        self.sessions = Sessions(db)
        self.audit = AuditLog(db)
        self.series = TimeSeries(db)
        self.login_tokens = LoginTokens(Path(cfg.paths.state_dir) / "console.key")
        self.accounts = open_store(cfg)
        self.limiter = SubmitClient(cfg.paths.internal_socket, timeout=10.0)
        from services.console import public

        # (method, path) -> handler; admin routes (self.admin, loaded at the first request that needs
        # them) need an admin session, customer ones any session.
        self.customer: dict[tuple[str, str], Route] = public.CUSTOMER_ROUTES
        self.public: dict[tuple[str, str], Callable[[Console, Req], Resp]] = public.PUBLIC_ROUTES

    # cached_property: built once, at first use (two first requests at once may both build it; same result).
    @cached_property
    def admin(self) -> dict[tuple[str, str], Route]:
        from services.console import pages

        return pages.ROUTES

    @cached_property
    def jinja(self) -> jinja2.Environment:
        import jinja2

        env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                                 autoescape=True, undefined=jinja2.StrictUndefined)
        env.filters["ts"] = _ts
        return env

    # --- rendering ---------------------------------------------------------------------------

    def page(self, template: str, title: str, session: Session | None, status: int = 200, **kw: Any) -> Resp:
        html = self.jinja.get_template(template).render(title=title, hostname=self.cfg.box.hostname,
                                                        session=session, flash=kw.pop("flash", ""),
                                                        flash_bad=kw.pop("flash_bad", False), **kw)
        return Resp(status, html)

    def record(self, session: Session | None, req: Req, action: str, target: str, result: str) -> None:
        self.audit.record(session.login if session else "-", req.client_ip, action, target, result)

    # --- the one entry point ------------------------------------------------------------------

    def route(self, req: Req) -> Resp:
        if req.method not in ("GET", "HEAD", "POST"):
            return text(405, f"method {req.method} not allowed")
        method = "GET" if req.method == "HEAD" else req.method
        key = (method, req.path.rstrip("/") or "/")
        if key[0] == "GET" and key[1].startswith("/static/"):
            return self.static(key[1].removeprefix("/static/"))
        pub = self.public.get(key) or self.public.get((key[0], key[1].lower()))
        if pub is not None:
            return pub(self, req)
        if key == ("GET", "/login"):
            return self.login_form("/login", "Console login", ("/account/login", "Customers: log in here"))
        if key == ("GET", "/account/login"):
            return self.login_form("/account/login", "Your mail account", None)
        if key == ("POST", "/login"):
            return self.login(req, "admin")
        if key == ("POST", "/account/login"):
            return self.login(req, "customer")
        session = self.sessions.get(req.cookies.get(SESSION_COOKIE))
        handler = self.admin.get(key)
        wanted = "admin"
        if handler is None:
            handler, wanted = self.customer.get(key), "customer"
        if handler is None and key != ("POST", "/logout"):
            return text(404, f"no page {req.path}")
        if method == "POST" and (session is None or not csrf_ok(session.csrf, req.form.get("csrf"))):
            # Every change needs the session's own token: a form posted from another site has none.
            self.record(session, req, f"POST {key[1]}", "", "refused: missing or wrong CSRF token")
            return text(403, "refused: missing or wrong CSRF token (reload the page and try again)")
        if key == ("POST", "/logout"):
            assert session is not None
            self.sessions.delete(req.cookies.get(SESSION_COOKIE))
            self.record(session, req, "logout", session.login, "ok")
            return Resp(303, b"", headers=[("Location", "/login" if session.role == "admin" else "/account/login")],
                        cookies=[cookie(SESSION_COOKIE, "", 0)])
        if session is not None and not self._still_allowed(session):
            # Disabled, deleted or no longer an admin since the login: the session ends now.
            self.sessions.delete_login(session.login)
            session = None
        if session is None:
            return redirect("/login" if wanted == "admin" else "/account/login")
        if wanted == "admin" and session.role != "admin":
            return text(403, f"{session.login} is not a console administrator")
        assert handler is not None
        return handler(self, req, session)

    def _still_allowed(self, session: Session) -> bool:
        account = self.accounts.get(session.login)
        if account is None or account.disabled:
            return False
        return session.role != "admin" or bool(getattr(account, "admin", False))

    def static(self, name: str) -> Resp:
        if name != "console.css":
            return text(404, "no such file")
        return Resp(200, (STATIC / name).read_bytes(), "text/css; charset=utf-8")

    # --- login -----------------------------------------------------------------------------------

    def login_form(self, action: str, title: str, other: tuple[str, str] | None, status: int = 200,
                   flash: str = "") -> Resp:
        pre = self.login_tokens.new_cookie()
        resp = self.page("login.html", title, None, status, action=action, csrf=self.login_tokens.token_for(pre),
                         other=other, flash=flash, flash_bad=bool(flash))
        resp.cookies.append(cookie(PRE_LOGIN_COOKIE, pre, 3600))
        return resp

    def login(self, req: Req, role: str) -> Resp:
        action = "/login" if role == "admin" else "/account/login"
        title = "Console login" if role == "admin" else "Your mail account"
        other = ("/account/login", "Customers: log in here") if role == "admin" else None
        if not self.login_tokens.check(req.cookies.get(PRE_LOGIN_COOKIE), req.form.get("csrf")):
            self.record(None, req, f"login ({role})", req.form.get("login", "")[:320], "refused: login CSRF token")
            return text(403, "refused: missing or wrong CSRF token (reload the login page and try again)")
        login, password = req.form.get("login", "").strip(), req.form.get("password", "")
        # The one limiter (the relay's, over the internal socket, as IMAP and POP logins use it):
        # failures from this address and to this account are counted with every other entry point.
        check = self.limiter.auth_check(req.client_ip, login, LIMITER_PROTOCOL)
        if not check.ok:
            self.record(None, req, f"login ({role})", login[:320], f"refused: {check.code} {check.text}")
            status = 429 if check.limited else 503
            return self.login_form(action, title, other, status, flash=f"Login refused for now: {check.text}")
        account = self.accounts.authenticate(login, password) if login and password else None
        if account is None:
            self.limiter.auth_fail(req.client_ip, login, LIMITER_PROTOCOL)
            self.record(None, req, f"login ({role})", login[:320], "failed: wrong login or password")
            return self.login_form(action, title, other, 403, flash="Wrong login or password.")
        self.limiter.auth_ok(req.client_ip, account.address, LIMITER_PROTOCOL)
        if role == "admin" and not getattr(account, "admin", False):
            self.record(None, req, "login (admin)", account.address, "refused: not a console administrator")
            return self.login_form(action, title, other, 403,
                                   flash=f"{account.address} is not a console administrator.")
        token, _ = self.sessions.create(account.address, role, req.client_ip)
        self.audit.record(account.address, req.client_ip, f"login ({role})", account.address, "ok")
        return Resp(303, b"", headers=[("Location", "/" if role == "admin" else "/account")],
                    cookies=[cookie(SESSION_COOKIE, token, LIFETIME), cookie(PRE_LOGIN_COOKIE, "", 0)])
