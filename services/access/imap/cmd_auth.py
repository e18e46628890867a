"""Any-state and login commands: CAPABILITY NOOP CHECK LOGOUT STARTTLS LOGIN AUTHENTICATE ID
ENABLE COMPRESS IDLE (RFC 9051 §6.1, §6.2; RFC 2971 ID; RFC 5161 ENABLE; RFC 4978; RFC 2177)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from twisted.python import log

from appliance.fleet_config import normal_ip
from services.access import moves
from services.access.backend import LoginRefused, LoginUnavailable
from services.access.imap import accountstores, metrics
from services.access.imap.dispatch import (
    ANY,
    AUTH_OR_SELECTED,
    AUTHENTICATED,
    ONLY_NOT_AUTHENTICATED,
    ONLY_SELECTED,
    command,
)
from services.access.imap.errors import Bad, Done, No
from services.access.imap.session import ENABLEABLE, NOT_AUTHENTICATED, Session

SERVER_ID = (("name", "ISP Mail Appliance"), ("vendor", "ISP Mail Appliance"), ("support-url", None))


@command("CAPABILITY", ANY)
async def capability(s: Session, cmd: Any) -> Done:
    s.untagged(s.capability_code())
    return Done("CAPABILITY completed")


@command("NOOP", ANY)
async def noop(s: Session, cmd: Any) -> Done:
    return Done("NOOP completed")  # the session reports mailbox updates after NOOP


@command("CHECK", ONLY_SELECTED)
async def check(s: Session, cmd: Any) -> Done:
    return Done("CHECK completed")  # the index is always durable; RFC 9051 drops CHECK, rev1 keeps it


@command("LOGOUT", ANY)
async def logout(s: Session, cmd: Any) -> Done:
    s.untagged("BYE Logging out")
    s.closing = True  # RFC 9051 §6.1.3: BYE, then the tagged OK, then close
    return Done("LOGOUT completed")


@command("STARTTLS", ONLY_NOT_AUTHENTICATED)
async def starttls(s: Session, cmd: Any) -> None:
    if s.conn.secure:
        raise Bad("TLS is already active")
    s.tagged(cmd.tag, "OK", "Begin TLS negotiation now")
    if not s.conn.start_tls():
        s.bye("TLS not available")
        return
    # RFC 9051 §6.2.1 (and CVE-2011-0411): anything the client pipelined after STARTTLS
    # arrived in plaintext and must not be executed inside the TLS session.
    s.discard_input()


def _peer(s: Session) -> str:
    """The log fields of the client's address: ``ip=CLIENT`` and, through a fleet proxy, ``via=PROXY``."""
    return f"ip={s.conn.client_ip}" + (f" via={s.conn.via}" if s.conn.via else "")


async def _login(s: Session, user: str, password: str, tag: str) -> Done | None:
    if not s.conn.secure:
        raise No("LOGIN is disabled before STARTTLS", "PRIVACYREQUIRED")
    try:
        account = await s.backend.login(user, password, s.conn.client_ip)
    except LoginRefused:
        metrics.LOGINS.labels("imap", "failed").inc()
        log.msg(f"imap login failed user={user[:200]!r} {_peer(s)}")
        raise No("Authentication failed", "AUTHENTICATIONFAILED") from None
    except LoginUnavailable as exc:
        metrics.LOGINS.labels("imap", "unavailable").inc()
        reply = exc.reply
        raise No(reply.text, "LIMIT" if getattr(reply, "limited", False) else "UNAVAILABLE") from None
    caps = getattr(s.backend, "caps", None)
    if caps is not None:
        from services.access.conncaps import CapReached

        try:
            lease = caps.open_user(account, s.conn.client_ip, "imap")
        except CapReached as exc:
            s.bye(exc.text, "UNAVAILABLE")  # issue 13 item 4: the session ends
            raise No(exc.text, "UNAVAILABLE") from None
        s.cap_release = lease.release
        s.conn.logged_in_ip_release()
    home = s.backend.cfg.fleet.home_of(getattr(account, "home", ""))
    log.msg(f"imap login user={account.address} {_peer(s)}" + (f" proxied-to={home}" if home else ""))
    if home:  # the Maildir is on another box of the fleet: proxy the session there (docs/fleet.md)
        from services.access.proxy import proxy_login

        return await proxy_login(s, account, user, password, tag, home)
    if moves.REGISTRY.held(account.address):  # `appliance user move` is copying this Maildir
        raise No(moves.HELD_TEXT, "UNAVAILABLE")
    try:
        store = await accountstores.acquire(s.backend, account)
    except Exception:
        log.err(None, "imap: opening the mail store failed")
        raise No("Mail store unavailable, try again later", "UNAVAILABLE") from None
    if moves.REGISTRY.held(account.address):  # held while the store was opened
        raise No(moves.HELD_TEXT, "UNAVAILABLE")
    metrics.LOGINS.labels("imap", "ok").inc()
    s.logged_in(account, store)
    return Done("Logged in", s.capability_code())


@command("LOGIN", ONLY_NOT_AUTHENTICATED)
async def login(s: Session, cmd: Any) -> Done:
    return await _login(s, cmd.args.user, cmd.args.password, cmd.tag)


@command("AUTHENTICATE", ONLY_NOT_AUTHENTICATED)
async def authenticate(s: Session, cmd: Any) -> Done:
    if not s.conn.secure:
        raise No("AUTHENTICATE is disabled before STARTTLS", "PRIVACYREQUIRED")
    if cmd.args.mechanism != "PLAIN":
        raise No("Unsupported authentication mechanism", "CANNOT")
    data = cmd.args.initial  # RFC 4959 SASL-IR
    if data is None:
        s.write(b"+ \r\n")
        line = (await s.wait_line()).strip()
        if line == b"*":
            raise Bad("AUTHENTICATE cancelled")  # RFC 9051 §6.2.2
        try:
            data = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise Bad("AUTHENTICATE data is not base64") from None
    parts = data.split(b"\0")
    # RFC 4616: [authzid] NUL authcid NUL passwd; an authzid other than the user is refused.
    if len(parts) != 3 or (parts[0] and parts[0] != parts[1]):
        raise No("Authentication failed", "AUTHENTICATIONFAILED")
    return await _login(s, parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace"), cmd.tag)


def _originating_ip(s: Session, params: Any) -> str:
    """The client address a trusted fleet box's ID gives (Dovecot's ``x-originating-ip``), or "".
    Believed only before login, once, from an address of `[fleet.boxes.*]`, and only a valid IP;
    from anyone else it is ignored (RFC 2971 §3.1: ID is informational, never an error)."""
    if not params or s.state != NOT_AUTHENTICATED or s.conn.via:
        return ""
    given = dict((k.lower(), v) for k, v in params).get("x-originating-ip")
    if not given or normal_ip(s.conn.client_ip) not in s.backend.cfg.fleet.proxy_addresses():
        return ""
    ip = normal_ip(given)
    if not ip:
        log.msg(f"imap ID from fleet box {s.conn.client_ip}: x-originating-ip {given[:60]!r} is not an IP address")
    return ip


@command("ID", ANY)
async def id_(s: Session, cmd: Any) -> Done:
    origin = _originating_ip(s, cmd.args.params)
    if origin:
        refusal = s.conn.proxied_for(origin)
        if refusal is not None:  # the client's own address is at its per-IP cap here, as if it came direct
            s.bye(refusal, "UNAVAILABLE")
            return Done("ID completed")
    # RFC 2971 §3.1: the server answers with its own parameters (or NIL).
    fields = []
    for k, v in SERVER_ID:
        fields.append(f'"{k}" ' + (f'"{v}"' if v is not None else "NIL"))
    s.untagged("ID (" + " ".join(fields) + ")")
    return Done("ID completed")


@command("ENABLE", frozenset({AUTHENTICATED}))
async def enable(s: Session, cmd: Any) -> Done:
    """RFC 5161 §3.1: only in the authenticated state; unknown names are ignored; the
    untagged ENABLED lists what this command newly enabled."""
    newly: list[str] = []
    for name in cmd.args.capabilities:
        names = ["CONDSTORE", "QRESYNC"] if name == "QRESYNC" else [name]  # RFC 7162 §3.2.3
        for n in names:
            if n in ENABLEABLE and n not in s.enabled:
                s.enable(n)
                newly.append("IMAP4rev2" if n == "IMAP4REV2" else n)
    s.untagged("ENABLED" + "".join(" " + n for n in newly))
    return Done("ENABLE completed")


@command("COMPRESS", AUTH_OR_SELECTED)
async def compress(s: Session, cmd: Any) -> None:
    if s.conn.compressed:
        raise No("DEFLATE is already active", "COMPRESSIONACTIVE")  # RFC 4978 §3
    if cmd.args.mechanism != "DEFLATE":
        raise Bad(f"unknown compression mechanism {cmd.args.mechanism}")
    s.tagged(cmd.tag, "OK", "DEFLATE active")
    s.conn.start_compress()  # RFC 4978 §3: compression starts right after the tagged OK's CRLF


@command("IDLE", AUTH_OR_SELECTED)
async def idle(s: Session, cmd: Any) -> Done:
    """RFC 2177: updates are sent as they happen until the client says DONE."""
    s.write(b"+ idling\r\n")
    s.idling = True
    metrics.IDLE.inc()
    try:
        if s.sel is not None:
            await s.refresh(True, sync=True)  # what happened before IDLE began
        line = await s.wait_line()
    finally:
        if s.idling:
            s.idling = False
            metrics.IDLE.dec()
    await s.refresh_done()
    if line.strip().upper() != b"DONE":
        raise Bad("expected DONE")
    return Done("IDLE terminated")
