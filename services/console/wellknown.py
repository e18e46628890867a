"""The public HTTPS listener for the well-known names (`listeners.wellknown`, docs/console.md).

Sending MTAs fetch ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` (RFC 8461 3.3), Thunderbird
``https://autoconfig.DOMAIN/mail/config-v1.1.xml`` and Outlook POSTs to
``https://autodiscover.DOMAIN/autodiscover/autodiscover.xml``; all on port 443 and from anywhere.
This listener answers only those, routed by the Host header: its router knows no admin page,
customer page, login or static file, so opening it to the Internet exposes nothing else of the
console. The documents are the ones the console serves (services/console/public.py, written by
appliance/publish/).

Every resource a client can grow is capped: connections in all, connections per client address
(IPv6 by /64: one customer line gets a whole /64), each connection's whole life (the TLS handshake
included, so a slow handshake cannot hold a slot), request headers (16 KiB) and bodies (64 KiB, 413).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import reactor
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web import http, server

from appliance.config import Config, PublicWebListener
from appliance.publish.records import WEB_NAMES
from services.console import public
from services.console.web import Req, Resp, site, text

if TYPE_CHECKING:
    from services.console.app import Console

MAX_HEADERS = 16 * 1024  # request line and headers together; these requests carry a few hundred bytes
AUTODISCOVER_PATH = "/autodiscover/autodiscover.xml"  # matched lower-cased: Outlook varies the case
THUNDERBIRD_PATHS = ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml")

Handler = Callable[["Console", Req], Resp]


def names(cfg: Config) -> list[str]:
    """The host names this listener answers for (and that the certificate must name)."""
    out = [f"{label}.{d}" for d in cfg.box.domains for label in WEB_NAMES]
    return [*out, cfg.box.hostname] if cfg.box.hostname not in out else out


def thunderbird_for_host(c: Console, req: Req) -> Resp:
    # Without ?emailaddress= Thunderbird's file is for the domain it asked (autoconfig.DOMAIN).
    if "emailaddress" not in req.query and req.host.startswith("autoconfig."):
        req.query["emailaddress"] = req.host.removeprefix("autoconfig.")
    return public.thunderbird(c, req)


def routes(cfg: Config) -> dict[str, dict[str, tuple[str, Handler]]]:
    """host -> path -> (method, handler). Paths under autodiscover hosts are stored lower-cased."""
    table: dict[str, dict[str, tuple[str, Handler]]] = {}
    autodiscover = {AUTODISCOVER_PATH: ("POST", public.autodiscover)}
    for d in cfg.box.domains:
        table[f"mta-sts.{d}"] = {"/.well-known/mta-sts.txt": ("GET", public.mta_sts)}
        table[f"autoconfig.{d}"] = {p: ("GET", thunderbird_for_host) for p in THUNDERBIRD_PATHS}
        table[f"autodiscover.{d}"] = dict(autodiscover)
    table.setdefault(cfg.box.hostname, {}).update(autodiscover)
    return table


class Router:
    def __init__(self, console: Console) -> None:
        self._console = console
        self._routes = routes(console.cfg)

    def __call__(self, req: Req) -> Resp:
        paths = self._routes.get(req.host)
        if paths is None:
            return text(404, f"no such name here: {req.host[:80]!r}")
        found = paths.get(AUTODISCOVER_PATH if req.path.lower() == AUTODISCOVER_PATH else req.path)
        if found is None:
            return text(404, "not found")
        method, handler = found
        if req.method != method and not (method == "GET" and req.method == "HEAD"):
            allow = "GET, HEAD" if method == "GET" else method
            resp = text(405, f"method {req.method[:16]} not allowed here (use {method})")
            resp.headers.append(("Allow", allow))
            return resp
        return handler(self._console, req)


def client_key(host: str) -> str:
    """What the per-client cap counts by: the address, an IPv6 address by its /64."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # a dual-stack socket's IPv4 client
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


class _Capped(ProtocolWrapper):
    def connectionMade(self) -> None:
        f: CappedFactory = self.factory  # type: ignore[assignment]
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self._key = client_key(str(getattr(peer, "host", "")))
        self._timer: Any = None
        self._counted = False
        if f.open >= f.limits.max_connections or f.per_client[self._key] >= f.limits.max_per_client:
            # Refused before the TLS handshake costs anything.
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        f.open += 1
        f.per_client[self._key] += 1
        self._counted = True
        # The whole life, not idleness: a client trickling bytes (or a handshake) cannot keep its slot.
        self._timer = reactor.callLater(f.limits.connection_lifetime, self.transport.abortConnection)  # type: ignore[attr-defined,union-attr]
        super().connectionMade()

    def connectionLost(self, reason: Any) -> None:
        f: CappedFactory = self.factory  # type: ignore[assignment]
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._counted:
            self._counted = False
            f.open -= 1
            f.per_client[self._key] -= 1
            if f.per_client[self._key] <= 0:
                del f.per_client[self._key]
            super().connectionLost(reason)


class CappedFactory(WrappingFactory):
    protocol = _Capped  # type: ignore[assignment]
    noisy = False

    def __init__(self, wrapped: server.Site, limits: PublicWebListener) -> None:
        super().__init__(wrapped)
        self.limits = limits
        self.open = 0
        self.per_client: Counter[str] = Counter()


class _Channel(http.HTTPChannel):
    totalHeadersSize = MAX_HEADERS  # over it: 400 and the connection closed (twisted.web)


def capped_factory(route: Callable[[Req], Resp], limits: PublicWebListener) -> CappedFactory:
    """A public web listener: ROUTE behind the connection caps of LIMITS and the header cap."""
    s = site(route)
    s.protocol = _Channel  # type: ignore[assignment]
    return CappedFactory(s, limits)


def wellknown_factory(console: Console) -> CappedFactory:
    return capped_factory(Router(console), console.cfg.listeners.wellknown)
