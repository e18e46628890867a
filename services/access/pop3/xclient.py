"""POP3 XCLIENT from a box of the fleet: the proxied customer's address (docs/fleet.md "Home boxes").

Dovecot's POP3 proxy sends ``XCLIENT ADDR=<ip> PORT=<port>`` before its login (its IMAP proxy
uses ID ``x-originating-ip``; services/access/imap/cmd_auth.py). It is believed only in the
AUTHORIZATION state, once, from an address of `[fleet.boxes.*]` (``FleetConfig.proxy_addresses``),
and only with a valid IP in ADDR; then the session's client address becomes that IP for the per-IP
cap (the pre-login slot moves there), the login limiter, the per-user+IP cap and the log. From
anyone else the command does not exist (``-ERR Unknown command``, counted as one).
"""

from __future__ import annotations

from typing import Any

from twisted.python import log

from appliance.fleet_config import normal_ip
from services.access.conncaps import CapReached


def handle(p: Any, args: tuple[str, ...]) -> None:
    """XCLIENT ARGS on the POP3 server P."""
    peer = p.peer_ip
    if p.state != "authorization" or p.via or normal_ip(peer) not in p.backend.cfg.fleet.proxy_addresses():
        p._unknown("Unknown command")
        return
    fields = dict(a.partition("=")[::2] for a in args)
    ip = normal_ip(fields.get("ADDR", ""))
    if not ip:
        p.err(f"XCLIENT needs ADDR=<IP address>, not {fields.get('ADDR', '')[:60]!r}")
        return
    if p._ip_lease is not None:
        try:
            lease = p.backend.caps.open_ip(ip, "pop3")
        except CapReached as exc:  # the customer's own address is at its cap here, as if it came direct
            p.err("[SYS/TEMP] " + exc.text)
            p._quit = True
            p._lose()
            return
        p._ip_lease.release()
        p._ip_lease = lease
    p.via, p.origin = peer, ip
    log.msg(f"pop3 connection ip={ip} via={peer}")
    p.ok("Updated")
