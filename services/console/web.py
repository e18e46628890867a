"""The console's HTTP layer: one twisted.web resource that turns a request into a `Req`, runs the
handler in the reactor's thread pool (argon2, SQLite and the queue's files all block) and writes
the `Resp` back, with the same security headers on every answer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import threads
from twisted.python import log
from twisted.web import http, server
from twisted.web.resource import Resource

MAX_BODY = 64 * 1024  # forms and Autodiscover requests are small; a larger body is refused (413)
MAX_FIELDS = 50

SECURITY_HEADERS = (
    # No script at all, no framing, forms only to this origin.
    ("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("Strict-Transport-Security", "max-age=31536000"),
)


@dataclass
class Req:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    cookies: dict[str, str]
    client_ip: str
    body: bytes = b""
    host: str = ""  # the Host header without its port, lower-cased (the well-known listener routes by it;
    # an IDN arrives as its A-label)
    uri: str = ""  # the request target as sent (path and query), bytes outside printable ASCII %-escaped:
    # the plain-HTTP listener redirects to the same URL on https://


@dataclass
class Resp:
    status: int = 200
    body: bytes | str = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    cookies: list[str] = field(default_factory=list)  # Set-Cookie values


def text(status: int, message: str) -> Resp:
    return Resp(status, message.rstrip("\n") + "\n", "text/plain; charset=utf-8")


def redirect(location: str) -> Resp:
    # 303: after a POST the browser GETs the page (no resubmission on reload).
    return Resp(303, b"", "text/plain; charset=utf-8", [("Location", location)])


def cookie(name: str, value: str, max_age: int | None = None) -> str:
    """Secure (HTTPS only), HttpOnly (no script), SameSite=Strict (never sent from another site)."""
    age = f"; Max-Age={max_age}" if max_age is not None else ""
    return f"{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict{age}"


def _first(values: dict[bytes, list[bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in list(values.items())[:MAX_FIELDS]:
        if v:
            out[k.decode("utf-8", "replace")] = v[0].decode("utf-8", "replace")
    return out


def _cookies(header: bytes | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (header or b"").decode("latin-1").split(";")[:MAX_FIELDS]:
        name, eq, value = part.strip().partition("=")
        if eq:
            out.setdefault(name, value)
    return out


class CappedRequest(server.Request):
    """A request whose body may not exceed MAX_BODY: the connection is closed with 413."""

    def gotLength(self, length: int | None) -> None:
        self._console_too_big = length is not None and length > MAX_BODY
        self._console_seen = 0
        super().gotLength(None if self._console_too_big else length)

    def handleContentChunk(self, data: bytes) -> None:
        self._console_seen += len(data)
        if self._console_too_big or self._console_seen > MAX_BODY:
            if not self._console_too_big:
                self._console_too_big = True
            return  # dropped; process() answers 413
        super().handleContentChunk(data)

    def process(self) -> None:
        if getattr(self, "_console_too_big", False):
            self.setResponseCode(413)
            self.setHeader(b"content-type", b"text/plain; charset=utf-8")
            self.setHeader(b"connection", b"close")
            self.write(f"request body larger than {MAX_BODY} bytes\n".encode())
            self.finish()
            return
        super().process()


Handler = Callable[[Req], Resp]


class Dispatcher(Resource):
    isLeaf = True

    def __init__(self, route: Callable[[Req], Resp]) -> None:
        super().__init__()
        self._route = route

    def render(self, request: server.Request) -> Any:
        body = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        form: dict[str, str] = {}
        ctype = (request.getHeader(b"content-type") or b"").decode("latin-1").split(";")[0].strip().lower()
        if request.method == b"POST" and ctype == "application/x-www-form-urlencoded":
            form = _first({k: v for k, v in (request.args or {}).items()})
        query = _first(http.parse_qs(request.uri.split(b"?", 1)[1], keep_blank_values=True)) if b"?" in request.uri else {}
        addr = request.getClientAddress()
        req = Req(method=request.method.decode("ascii", "replace"),
                  path=request.path.decode("utf-8", "replace"),
                  query=query, form=form, cookies=_cookies(request.getHeader(b"cookie")),
                  client_ip=str(getattr(addr, "host", "")), body=body,
                  host=request.getRequestHostname().decode("ascii", "replace").lower().rstrip("."),
                  uri="".join(chr(b) if 0x21 <= b <= 0x7E else f"%{b:02X}" for b in request.uri))
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))  # the client went away
        d = threads.deferToThread(self._route, req)

        def done(resp: Resp) -> None:
            if gone or request.finished:
                return
            request.setResponseCode(resp.status)
            request.setHeader(b"content-type", resp.content_type.encode())
            for k, v in (*SECURITY_HEADERS, *resp.headers):
                request.setHeader(k.encode(), v.encode())
            for c in resp.cookies:
                request.responseHeaders.addRawHeader(b"set-cookie", c.encode())
            data = resp.body.encode() if isinstance(resp.body, str) else resp.body
            if request.method != b"HEAD":
                request.write(data)
            request.finish()

        def failed(f: Any) -> None:
            log.err(f, "console: handler failed")
            done(text(500, "internal error (logged)"))

        d.addCallback(done).addErrback(failed)
        return server.NOT_DONE_YET


def site(route: Callable[[Req], Resp]) -> server.Site:
    s = server.Site(Dispatcher(route))
    s.requestFactory = CappedRequest
    s.displayTracebacks = False
    s.noisy = False
    return s
