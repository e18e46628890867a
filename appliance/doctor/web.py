"""What the console serves for DNS-discovered names: the MTA-STS policy (RFC 8461 3.3) and autoconfig.

Senders fetch ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` and clients ``https://autoconfig.DOMAIN/``
from outside, on port 443; the console (services/console/) serves both. Doctor fetches the policy from
the console itself, as a sender would (Host: mta-sts.DOMAIN), and compares it with the box's policy.
"""

from __future__ import annotations

import http.client
import ipaddress
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


def check_web(cfg: Config) -> list[Finding]:
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
                           "bind listeners.console to the public address on port 443, or forward 443 to it"))
    return out
