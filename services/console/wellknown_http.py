"""The public plain-HTTP listener on the well-known names (`listeners.wellknown_http`, docs/console.md).

What clients really ask for over plain HTTP, and what each gets:

- Thunderbird tries ``https://autoconfig.DOMAIN/mail/config-v1.1.xml`` first and then the same URL
  over ``http://`` (Thunderbird's autoconfig lookup order); a redirect there would only send it back
  to the HTTPS fetch that already failed, so that one URL is served as it is over HTTPS. The file
  holds no secret (server names, ports, ``%EMAILADDRESS%``); an attacker on the path could alter it,
  the risk Thunderbird takes with its own HTTP fetch (off with ``mailnews.auto_config.fetchFromISP.sslOnly``),
  and the client still verifies the IMAP/SMTP certificates it is pointed at.
- Outlook's "HTTP redirect method" (MS-OXDISCO) GETs
  ``http://autodiscover.DOMAIN/Autodiscover/Autodiscover.xml`` and expects a **302** whose Location
  starts with ``https://`` and ends in ``/autodiscover/autodiscover.xml``; it then asks the user and
  POSTs there. That is what it gets.
- The ACME CA fetches ``http://NAME/.well-known/acme-challenge/TOKEN`` (RFC 8555 8.3) on port 80,
  for every name of the certificate: served from the directory certbot's ``--webroot`` writes
  (``acme_webroot``), under any Host (the tokens are public by design; the certificate may name
  hosts, ``tls:names``, that are not well-known names).
- Everything else on a well-known name: 301 to the same URL on ``https://`` (the HTTPS listener's
  port added when it is not 443). The MTA-STS policy is never served here (RFC 8461 3.3: fetched
  over HTTPS only; a sender does not follow redirects), nor any console page (this router knows
  none). Other Host names: 404.

The caps are those of the HTTPS listener (services/console/wellknown.py), with their own keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from services.console.web import Req, Resp, text
from services.console.wellknown import AUTODISCOVER_PATH, CappedFactory, capped_factory, routes, thunderbird_for_host

if TYPE_CHECKING:
    from services.console.app import Console

ACME_PREFIX = "/.well-known/acme-challenge/"
# RFC 8555 8.1: a token is base64url; nothing else (no "/", no "..") can name a file.
ACME_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
MAX_CHALLENGE = 4096  # a key authorization is token "." thumbprint, under 200 bytes
THUNDERBIRD_HTTP_PATH = "/mail/config-v1.1.xml"  # on autoconfig.DOMAIN; the .well-known form is on DOMAIN itself


class HttpRouter:
    def __init__(self, console: Console) -> None:
        self._console = console
        cfg = console.cfg
        self._names = set(routes(cfg))
        self._webroot = cfg.listeners.wellknown_http.acme_webroot
        port = cfg.listeners.wellknown.port
        self._https_port = "" if port == 443 else f":{port}"

    def __call__(self, req: Req) -> Resp:
        if req.path.startswith(ACME_PREFIX):
            return self._challenge(req.path.removeprefix(ACME_PREFIX))
        if req.host not in self._names:
            return text(404, f"no such name here: {req.host[:80]!r}")
        if req.path.lower() == AUTODISCOVER_PATH:
            # MS-OXDISCO, the HTTP redirect method: a 302 to the HTTPS endpoint on the same name.
            return self._redirect(302, req.host, AUTODISCOVER_PATH)
        if req.host.startswith("autoconfig.") and req.path == THUNDERBIRD_HTTP_PATH and req.method in ("GET", "HEAD"):
            return thunderbird_for_host(self._console, req)
        return self._redirect(301, req.host, req.uri or req.path)

    def _redirect(self, status: int, host: str, target: str) -> Resp:
        # HOST is one of this box's names (checked above), so the Location cannot point elsewhere.
        return Resp(status, b"", "text/plain; charset=utf-8", [("Location", f"https://{host}{self._https_port}{target}")])

    def _challenge(self, token: str) -> Resp:
        if not self._webroot:
            return text(404, "no ACME webroot here (listeners.wellknown_http.acme_webroot is empty)")
        if not ACME_TOKEN.fullmatch(token):
            return text(404, "not an ACME token")
        try:
            with open(Path(self._webroot) / ".well-known" / "acme-challenge" / token, "rb") as fh:
                data = fh.read(MAX_CHALLENGE + 1)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return text(404, "no such challenge")
        if len(data) > MAX_CHALLENGE:
            return text(404, "not an ACME key authorization (too large)")
        return Resp(200, data, "application/octet-stream")


def wellknown_http_factory(console: Console) -> CappedFactory:
    return capped_factory(HttpRouter(console), console.cfg.listeners.wellknown_http)
