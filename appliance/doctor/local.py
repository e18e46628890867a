"""Checks of the box itself: certificate, clock, registry freshness, disk, listeners."""

from __future__ import annotations

import datetime as dt
import email.utils
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import verification

from appliance.catalog import endpoints
from appliance.config import Config
from appliance.doctor import Finding
from appliance.publish.records import WEB_NAMES
from appliance.spool.spool import DEFAULT_FREE_RESERVE

SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")  # Debian's ca-certificates bundle
CERT_WARN_DAYS = 14  # certbot renews 30 days ahead; two weeks left means renewal has been failing
CLOCK_WARN_S = 30
CLOCK_ERROR_S = 300  # beyond this, TLS, DKIM x= and TUF expiry judgements go wrong
LISTENER_TIMEOUT = 3.0
BANNERS = {"mx": b"220", "submission": b"220", "submissions": b"220", "imap": b"* OK", "imaps": b"* OK",
           "pop3": b"+OK", "pop3s": b"+OK"}
MAX_BANNER = 4096


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _public(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.lower() for n in san.get_values_for_type(x509.DNSName)]


def _covers(names: list[str], host: str) -> bool:
    # RFC 6125 6.4.3: a wildcard stands for exactly one left-most label.
    return host in names or any(n.startswith("*.") and host.partition(".")[2] == n[2:] for n in names)


def check_certificate(cfg: Config) -> list[Finding]:
    try:
        chain = x509.load_pem_x509_certificates(Path(cfg.tls.cert).read_bytes())
    except (OSError, ValueError) as exc:
        return [Finding("certificate", "error", f"tls.cert {cfg.tls.cert}: cannot read: {exc}",
                        "point tls.cert at the PEM chain (certbot's fullchain.pem)")]
    leaf, out = chain[0], []
    try:
        key = serialization.load_pem_private_key(Path(cfg.tls.key).read_bytes(), password=None)
        if _public(key.public_key()) != _public(leaf.public_key()):
            out.append(Finding("certificate key", "error", "tls.key is not the key of tls.cert: TLS handshakes fail",
                               "point tls.key at the certificate's own key (certbot's privkey.pem)"))
    except (OSError, ValueError, TypeError) as exc:
        out.append(Finding("certificate key", "error", f"tls.key {cfg.tls.key}: cannot read: {exc}",
                           "point tls.key at the certificate's private key"))
    names = _names(leaf)
    if not _covers(names, cfg.box.hostname):
        out.append(Finding("certificate name", "error", f"the certificate does not name {cfg.box.hostname} "
                           f"(it names {', '.join(names) or 'nothing'})", "get a certificate for box.hostname"))
    web = [f"{label}.{d}" for d in cfg.box.domains for label in WEB_NAMES]
    missing = [n for n in web if not _covers(names, n)]
    if missing:
        out.append(Finding("certificate names", "warning", f"the certificate does not name {', '.join(missing)}: "
                           "MTA-STS and autoconfig fetches over HTTPS fail", "add these names to the certificate"))
    days = (leaf.not_valid_after_utc - _now()).total_seconds() / 86400
    if days < 0:
        out.append(Finding("certificate expiry", "error", f"expired on {leaf.not_valid_after_utc:%Y-%m-%d}",
                           "renew it (certbot renew) and restart: appliance down; appliance up"))
    elif days < CERT_WARN_DAYS:
        out.append(Finding("certificate expiry", "warning", f"expires in {days:.0f} days",
                           "renew it now (certbot renew): automatic renewal seems to be failing"))
    else:
        out.append(Finding("certificate expiry", "ok", f"valid for {days:.0f} more days"))
    out.append(_check_chain(cfg, chain))
    return out


def _check_chain(cfg: Config, chain: list[x509.Certificate]) -> Finding:
    leaf = chain[0]
    if leaf.issuer == leaf.subject:
        return Finding("certificate chain", "warning", f"self-signed (tls.source = {cfg.tls.source}): "
                       "clients warn, MTA-STS senders refuse it", "get a CA-issued certificate (certbot)")
    try:
        with warnings.catch_warnings():
            # Debian's bundle has old roots with non-positive serials; cryptography warns about each.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            store = verification.Store(x509.load_pem_x509_certificates(SYSTEM_CAS.read_bytes()))
        verifier = (verification.PolicyBuilder().store(store).time(_now())
                    .build_server_verifier(x509.DNSName(cfg.box.hostname)))
        verifier.verify(leaf, chain[1:])
    except OSError as exc:
        return Finding("certificate chain", "warning", f"no system CA bundle to check against ({exc})",
                       "install Debian's ca-certificates")
    except (verification.VerificationError, ValueError) as exc:
        return Finding("certificate chain", "error", f"does not verify against the system CAs: {exc}",
                       "use the full chain (certbot's fullchain.pem) in tls.cert")
    return Finding("certificate chain", "ok", f"chain of {len(chain)} verifies against the system CAs")


def _http_date(url: str) -> tuple[dt.datetime, float] | None:
    """The Date header (RFC 9110 6.6.1) of URL's server and the request's round trip; None if none."""
    req = urllib.request.Request(url, method="HEAD")
    start = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            date = resp.headers.get("Date")
    except urllib.error.HTTPError as exc:
        date = exc.headers.get("Date")  # any status carries the server's clock
    except (OSError, ValueError):
        return None
    if not date:
        return None
    try:
        return email.utils.parsedate_to_datetime(date).astimezone(dt.UTC), time.monotonic() - start
    except (TypeError, ValueError):
        return None


def _ntp_synchronized() -> bool | None:
    tool = shutil.which("timedatectl")
    if tool is None:
        return None
    try:
        r = subprocess.run([tool, "show", "--property=NTPSynchronized", "--value"], capture_output=True,
                           text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"yes": True, "no": False}.get(r.stdout.strip()) if r.returncode == 0 else None


def check_clock(cfg: Config) -> list[Finding]:
    """The clock against the registry server's Date header (http/https registry.url), else NTP's own
    verdict (timedatectl). A file: registry and no systemd leave nothing to compare with: a warning."""
    url = cfg.registry.url
    if url.startswith(("http://", "https://")):
        got = _http_date(url.rstrip("/") + "/metadata/timestamp.json")
        if got is not None:
            theirs, rtt = got
            # The header has 1 s resolution and was written some time within the round trip.
            skew = (_now() - theirs).total_seconds()
            slack = 1 + rtt
            off = f"this box's clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the registry server's"
            if abs(skew) > CLOCK_ERROR_S + slack:
                return [Finding("clock", "error", off, "enable NTP (systemd-timesyncd or chrony) and correct the clock")]
            if abs(skew) > CLOCK_WARN_S + slack:
                return [Finding("clock", "warning", off, "enable NTP (systemd-timesyncd or chrony)")]
            return [Finding("clock", "ok", f"within {max(abs(skew), slack):.0f} s of the registry server's clock")]
    synced = _ntp_synchronized()
    if synced:
        return [Finding("clock", "ok", "synchronized by NTP (timedatectl)")]
    if synced is False:
        return [Finding("clock", "warning", "NTP is not synchronized (timedatectl)",
                        "enable NTP: timedatectl set-ntp true")]
    return [Finding("clock", "warning", "no time source to compare with (file: registry, no timedatectl)",
                    "run NTP on the box; doctor compares with an http(s) registry.url's Date when there is one")]


def check_registry(cfg: Config) -> list[Finding]:
    from appliance.status import registry_status

    st = registry_status(cfg)
    if st["alarm"]:
        return [Finding("registry", "error", str(st["alarm"]),
                        "check registry_sync (appliance status; its log in paths.log_dir)")]
    last = st.get("last_success")
    if cfg.registry.url and last:
        try:
            age = (_now() - dt.datetime.fromisoformat(str(last).replace("Z", "+00:00"))).total_seconds()
        except ValueError:
            age = None
        if age is not None and age > 3 * cfg.registry.poll_interval:
            return [Finding("registry", "warning", f"last successful poll {age:.0f} s ago "
                            f"(poll_interval {cfg.registry.poll_interval} s)", "check registry_sync and registry.url")]
    exp = f", expires {st['expires']}" if st.get("expires") else ""
    return [Finding("registry", "ok", f"version {st.get('version')}, {st.get('members')} members{exp}")]


def _human(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def check_disk(cfg: Config) -> list[Finding]:
    """Free space where mail is written. The spool refuses a message that would eat into its reserve
    (appliance/spool/spool.py): below reserve + max_message_size the next large message is refused."""
    need = DEFAULT_FREE_RESERVE + cfg.relay.max_message_size
    out, seen = [], set()
    for key, d in (("paths.spool_dir", cfg.paths.spool_dir), ("paths.mail_dir", cfg.paths.mail_dir)):
        try:
            st = os.statvfs(d)
        except OSError as exc:
            out.append(Finding(f"disk {key}", "error", f"{d}: {exc.strerror}", f"create {d} (appliance up does)"))
            continue
        if st.f_fsid in seen:
            continue
        seen.add(st.f_fsid)
        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        shown = f"{_human(free)} free of {_human(total)} at {d}"
        if free < need:
            out.append(Finding(f"disk {key}", "error", f"{shown}: less than reserve + one largest message "
                               f"({need} bytes): new mail is refused", "free space or grow the file system"))
        elif free < 10 * need or free < total * 0.05:
            out.append(Finding(f"disk {key}", "warning", f"{shown}: nearly full", "free space soon"))
        else:
            out.append(Finding(f"disk {key}", "ok", shown))
    return out


def _connect_host(host: str) -> str:
    # A wildcard bind is reached on loopback.
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


class _Lines:
    """Reply lines from a socket, each capped at MAX_BANNER (a listener that never ends a line is an answer too)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def line(self) -> bytes:
        while b"\n" not in self.buf and len(self.buf) < MAX_BANNER:
            chunk = self.sock.recv(MAX_BANNER)
            if not chunk:
                break
            self.buf += chunk
        line, sep, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r") if sep else line

    def smtp_reply(self) -> list[bytes]:
        """An SMTP reply: lines until one without the continuation dash (RFC 5321 4.2.1)."""
        lines = []
        for _ in range(100):
            lines.append(self.line())
            if len(lines[-1]) < 4 or lines[-1][3:4] != b"-":
                break
        return lines


def _tls(sock: socket.socket) -> ssl.SSLSocket:
    ctx = ssl.create_default_context()
    # The certificate is judged by check_certificate; here: does the listener speak TLS at all.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx.wrap_socket(sock, server_hostname=None)


def _starttls(proto: str, sock: socket.socket, lines: _Lines) -> str:
    """Ask for TLS as a client would (RFC 3207, RFC 9051 6.2.1, RFC 2595 4); '' once the handshake is done."""
    if proto == "smtp":
        sock.sendall(b"EHLO doctor.invalid\r\n")
        ehlo = lines.smtp_reply()
        if not ehlo[0].startswith(b"250") or not any(line[4:].upper().startswith(b"STARTTLS") for line in ehlo):
            return f"EHLO reply offers no STARTTLS: {ehlo[-1][:60]!r}"
        sock.sendall(b"STARTTLS\r\n")
        reply, want = lines.smtp_reply()[-1], b"220"
    elif proto == "imap":
        sock.sendall(b"d1 STARTTLS\r\n")
        reply = lines.line()
        for _ in range(100):
            if reply.startswith(b"d1 "):
                break
            reply = lines.line()  # untagged lines before the tagged completion
        want = b"d1 OK"
    else:
        sock.sendall(b"STLS\r\n")
        reply, want = lines.line(), b"+OK"
    if not reply.startswith(want):
        return f"STARTTLS refused: {reply[:60]!r}"
    _tls(sock).close()
    return ""


PROTOCOLS = {"mx": "smtp", "submission": "smtp", "submissions": "smtp", "imap": "imap", "imaps": "imap",
             "pop3": "pop3", "pop3s": "pop3"}


def _probe(name: str, host: str, port: int, tls: str) -> tuple[str, str]:
    """(level, what was seen): connect, TLS for implicit listeners, the greeting, then STARTTLS
    where the listener offers it; metrics must answer 200. Other endpoints (the console): connect + TLS."""
    proto = PROTOCOLS.get(name) or ("http" if name.endswith("metrics") else "")
    try:
        sock: socket.socket = socket.create_connection((host, port), timeout=LISTENER_TIMEOUT)
    except OSError as exc:
        return "error", f"cannot connect: {exc.strerror or exc}"
    try:
        if tls == "implicit":
            sock = _tls(sock)
        lines = _Lines(sock)
        if proto == "http":
            sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            status = lines.line()
            if not status.startswith(b"HTTP/1.") or status.split(b" ")[1:2] != [b"200"]:
                return "error", f"metrics answered {status[:60]!r}"
            return "ok", "answers 200"
        if not proto:
            return "ok", "accepts connections" + (" over TLS" if tls == "implicit" else "")
        greeting = lines.smtp_reply()[-1] if proto == "smtp" else lines.line()
        if proto == "smtp" and name == "mx" and greeting.startswith(b"554"):
            # relay.outsiders = refuse: this client is no member's relay. The listener is alive.
            return "ok", "answers (refuses this address at the greeting: it is no member's relay)"
        if not greeting.startswith(BANNERS[name]):
            return "error", f"unexpected greeting {greeting[:60]!r}"
        if tls == "starttls":
            why = _starttls(proto, sock, lines)
            return ("error", why) if why else ("ok", "answers, STARTTLS works")
        return "ok", "answers" + (" over TLS" if tls == "implicit" else "")
    except (OSError, ssl.SSLError) as exc:
        return "error", f"connected, then: {exc}"
    finally:
        sock.close()


def check_listeners(cfg: Config) -> list[Finding]:
    out = []
    for ep in endpoints(cfg):
        if not ep.enabled:
            continue
        host = _connect_host(ep.host)
        where = f"{host}:{ep.port}" if ":" not in host else f"[{host}]:{ep.port}"
        level, seen = _probe(ep.name, host, ep.port, ep.tls)
        fix = "" if level == "ok" else f"start the box (appliance up); see `appliance status` and the {ep.service} log"
        out.append(Finding(f"listener {ep.name}", level, f"{ep.service} {ep.name} at {where}: {seen}", fix))
    return out
