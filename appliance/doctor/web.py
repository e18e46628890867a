"""What the console serves for DNS-discovered names: the MTA-STS policy (RFC 8461 3.3) and autoconfig.

Senders fetch ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` and clients ``https://autoconfig.DOMAIN/``
from outside, on port 443. With `listeners.wellknown` on, doctor fetches every name from that listener
as a client would: the certificate verified for the name (check_wellknown). Without it, the policy is
fetched from the console's own endpoint (no verification: check_certificate judges the names).
With `listeners.wellknown_http` on, its HTTP autoconfig and its redirect are fetched too (check_wellknown_http).
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl

from appliance.config import Config
from appliance.doctor import Finding
from appliance.publish import mtasts

FETCH_TIMEOUT = 5.0
MAX_POLICY = 64 * 1024  # RFC 8461 3.3: senders may limit the policy's size; ours is a few lines


def _fetch(host: str, port: int, vhost: str) -> tuple[int, str]:
    ctx = ssl.create_default_context()
    # The certificate is judged by check_certificate (which names are covered); here: what is served.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(host, port, timeout=FETCH_TIMEOUT, context=ctx)
    try:
        conn.request("GET", mtasts.WELL_KNOWN_PATH, headers={"Host": vhost})
        resp = conn.getresponse()
        return resp.status, resp.read(MAX_POLICY).decode("utf-8", "replace")
    finally:
        conn.close()


AUTODISCOVER_PROBE = (
    '<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{req}"><Request><EMailAddress>{email}'
    '</EMailAddress><AcceptableResponseSchema>{resp}</AcceptableResponseSchema></Request></Autodiscover>')


class _Verified(http.client.HTTPSConnection):
    """Dial ADDRESS:PORT and verify the certificate for the name asked (SNI and Host are the name)."""

    def __init__(self, name: str, address: str, port: int, ctx: ssl.SSLContext) -> None:
        super().__init__(name, port, timeout=FETCH_TIMEOUT, context=ctx)
        self._address, self._ctx = address, ctx

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self.host)


def _get(name: str, address: str, port: int, cafile: str | None, method: str, path: str,
         body: bytes | None = None) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=cafile)
    conn = _Verified(name, address, port, ctx)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "text/xml"} if body else {})
        resp = conn.getresponse()
        return resp.status, resp.read(MAX_POLICY)
    finally:
        conn.close()


def check_wellknown(cfg: Config) -> list[Finding]:
    """Each name of the well-known listener fetched over HTTPS, the certificate verified for that name."""
    from appliance.publish import autoconfig

    lst = cfg.listeners.wellknown
    address = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(lst.host, lst.host)
    # A self-signed box is its own CA; a certbot certificate must verify with the system's roots.
    cafile = cfg.tls.cert if cfg.tls.source == "self-signed" else None
    want_policy = mtasts.policy_text(cfg).encode()
    out = []
    for domain in cfg.box.domains:
        probe = AUTODISCOVER_PROBE.format(req=autoconfig.AUTODISCOVER_REQUEST_NS, resp=autoconfig.OUTLOOK_RESPONSE_NS,
                                          email=f"postmaster@{domain}").encode()
        for label, name, method, path, body, check in (
            (f"mta-sts policy {domain}", f"mta-sts.{domain}", "GET", mtasts.WELL_KNOWN_PATH, None,
             lambda b: b == want_policy),
            (f"autoconfig {domain}", f"autoconfig.{domain}", "GET", "/mail/config-v1.1.xml", None,
             lambda b: b"<clientConfig" in b),
            (f"autodiscover {domain}", f"autodiscover.{domain}", "POST", "/autodiscover/autodiscover.xml", probe,
             lambda b: b"<Protocol" in b),
        ):
            try:
                status, got = _get(name, address, lst.port, cafile, method, path, body)
            except ssl.SSLCertVerificationError as exc:
                out.append(Finding(label, "error", f"{address}:{lst.port}: the certificate does not verify "
                                   f"for {name}: {exc.verify_message}", "add the name to the certificate "
                                   "(docs/console.md) and restart the console"))
                continue
            except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
                out.append(Finding(label, "error", f"listeners.wellknown {address}:{lst.port} did not "
                                   f"answer: {exc}", "start the console (appliance up) and see its log"))
                continue
            if status != 200 or not check(got):
                out.append(Finding(label, "error", f"{method} {path} answered {status}: {got[:80]!r}",
                                   "see the console's log"))
            else:
                out.append(Finding(label, "ok", f"https://{name}{path} served, certificate verified"))
    if lst.port != 443 or not ipaddress.ip_address(address).is_global:
        out.append(Finding("mta-sts reachable", "warning", f"listeners.wellknown is on {address}:{lst.port}, but "
                           "senders and mail clients fetch the names on port 443 from outside",
                           "bind listeners.wellknown to the public address on port 443 (docs/console.md)"))
    return out


def _plain_get(address: str, port: int, name: str, path: str) -> tuple[int, str, bytes]:
    """(status, Location, body) of http://NAME/PATH dialled at ADDRESS:PORT; redirects not followed."""
    conn = http.client.HTTPConnection(address, port, timeout=FETCH_TIMEOUT)
    try:
        conn.request("GET", path, headers={"Host": name})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Location") or "", resp.read(MAX_POLICY)
    finally:
        conn.close()


def check_wellknown_http(cfg: Config) -> list[Finding]:
    """The plain-HTTP listener: Thunderbird's HTTP autoconfig served, the policy only as a redirect to HTTPS."""
    lst = cfg.listeners.wellknown_http
    address = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(lst.host, lst.host)
    out = []
    for domain in cfg.box.domains:
        label = f"http autoconfig {domain}"
        try:
            status, _, body = _plain_get(address, lst.port, f"autoconfig.{domain}", "/mail/config-v1.1.xml")
            if status == 200 and b"<clientConfig" in body:
                out.append(Finding(label, "ok", f"http://autoconfig.{domain}/mail/config-v1.1.xml served"))
            else:
                out.append(Finding(label, "error", f"answered {status}: {body[:80]!r}", "see the console's log"))
            label = f"http redirect {domain}"
            status, location, body = _plain_get(address, lst.port, f"mta-sts.{domain}", mtasts.WELL_KNOWN_PATH)
            if status == 301 and location.startswith(f"https://mta-sts.{domain}") and b"STSv1" not in body:
                out.append(Finding(label, "ok", f"http://mta-sts.{domain}/ redirects to HTTPS (policy not served)"))
            else:
                out.append(Finding(label, "error", f"http://mta-sts.{domain}{mtasts.WELL_KNOWN_PATH} answered "
                                   f"{status} {location[:80]!r}", "see the console's log"))
        except (OSError, http.client.HTTPException) as exc:
            out.append(Finding(label, "error", f"listeners.wellknown_http {address}:{lst.port} did not answer: "
                               f"{exc}", "start the console (appliance up) and see its log"))
    if lst.acme_webroot and not os.access(os.path.join(lst.acme_webroot, ".well-known", "acme-challenge"),
                                          os.R_OK | os.X_OK):
        out.append(Finding("acme webroot", "warning", f"{lst.acme_webroot}/.well-known/acme-challenge is missing "
                           "or unreadable: certbot --webroot renewals would fail",
                           "create it (Salt's certbot state does) readable by the service user"))
    if lst.port != 80 or not ipaddress.ip_address(address).is_global:
        out.append(Finding("http reachable", "warning", f"listeners.wellknown_http is on {address}:{lst.port}, but "
                           "clients and the ACME CA fetch http://NAME/ on port 80 from outside",
                           "bind listeners.wellknown_http to the public address on port 80 (docs/console.md)"))
    return out


def check_web(cfg: Config) -> list[Finding]:
    if cfg.listeners.wellknown.enabled:
        out = check_wellknown(cfg)
        return out + check_wellknown_http(cfg) if cfg.listeners.wellknown_http.enabled else out
    lst = cfg.listeners.console
    if not lst.enabled:
        return [Finding("mta-sts policy", "warning", "listeners.console is disabled: nothing serves the MTA-STS "
                        "policy or autoconfig", "enable listeners.console (docs/console.md)")]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(lst.host, lst.host)
    out = []
    want = mtasts.policy_text(cfg)
    for domain in cfg.box.domains:
        try:
            status, body = _fetch(host, lst.port, f"mta-sts.{domain}")
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            out.append(Finding(f"mta-sts policy {domain}", "error", f"the console at {host}:{lst.port} did not "
                               f"serve it: {exc}", "start the console (appliance up) and see its log"))
            continue
        if status != 200:
            out.append(Finding(f"mta-sts policy {domain}", "error", f"the console answered {status}: {body[:80]!r}",
                               "see the console's log"))
        elif body != want:
            out.append(Finding(f"mta-sts policy {domain}", "error", "the console serves a policy that is not the "
                               "box's (the _mta-sts id would not change with it)", "restart the console"))
        else:
            out.append(Finding(f"mta-sts policy {domain}", "ok", f"served by the console (mode "
                               f"{cfg.publish.mta_sts_mode})"))
    if lst.port != 443 or not ipaddress.ip_address(host).is_global:
        out.append(Finding("mta-sts reachable", "warning", f"the console listens on {host}:{lst.port}, but senders "
                           "and mail clients fetch https://mta-sts.DOMAIN/ and https://autoconfig.DOMAIN/ on port 443",
                           "write a [listeners.wellknown] table once the names resolve to the box (docs/console.md)"))
    return out
