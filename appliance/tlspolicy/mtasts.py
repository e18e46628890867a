"""MTA-STS (RFC 8461): the TXT record, the policy fetched over HTTPS, cached in SQLite.

- 3.1: ``_mta-sts.DOMAIN`` TXT ``v=STSv1; id=...``; more than one such record: no policy.
- 3.3: ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt``, the certificate verified (PKIX)
  for that name; redirects MUST NOT be followed; only a 200 is a policy.
- 5.1: a cached policy is used until max_age; a new TXT id means fetch again; when the
  fetch fails the cached policy stays in force; with neither a policy nor a cache the
  domain is treated as having no MTA-STS (3.3: never a reason to defer).
- 4.1: MX host patterns: exact, or ``*.`` for exactly one leftmost label.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import sqlite3
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import dns.asyncresolver

from appliance.sqlite_wal import enable_wal
from appliance.tlspolicy.dnssec import LookupFailed, lookup, txt_strings

MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 3.3: senders may limit the size; 64 KiB is ample
FETCH_TIMEOUT = 30.0  # RFC 8461 3.3: SHOULD impose a timeout (of a minute at most)
MAX_AGE_LIMIT = 31_557_600  # RFC 8461 3.2: at most about one year
HTTPS_PORT = 443


class PolicyError(Exception):
    def __init__(self, result_type: str, text: str) -> None:
        super().__init__(text)
        self.result_type, self.text = result_type, text


@dataclass(frozen=True)
class Policy:
    id: str
    mode: str  # enforce | testing | none
    mx: tuple[str, ...]
    max_age: int
    text: str

    def matches(self, host: str) -> bool:
        return any(mx_matches(p, host) for p in self.mx)

    def strings(self) -> tuple[str, ...]:
        """The policy's lines, as TLS-RPT's policy-string (RFC 8460 4.4)."""
        return tuple(line.strip() for line in self.text.splitlines() if line.strip())


@dataclass(frozen=True)
class Found:
    policy: Policy | None
    error: PolicyError | None = None  # a TXT record said there is a policy, but none could be had


def mx_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        return "." in host and host.split(".", 1)[1] == pattern[2:]  # one label only (RFC 8461 4.1)
    return pattern == host


def parse(text: str, policy_id: str) -> Policy:
    """RFC 8461 3.2; raises PolicyError("sts-policy-invalid")."""
    fields: dict[str, list[str]] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError("sts-policy-invalid", f"policy line without a colon: {line[:80]!r}")
        fields.setdefault(key.strip(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise PolicyError("sts-policy-invalid", f"policy version is {fields.get('version')}, not STSv1")
    mode = (fields.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError("sts-policy-invalid", f"policy mode {mode!r} is not enforce, testing or none")
    try:
        max_age = int((fields.get("max_age") or [""])[0])
    except ValueError:
        raise PolicyError("sts-policy-invalid", "policy max_age is not a number") from None
    if not 0 <= max_age <= MAX_AGE_LIMIT:
        raise PolicyError("sts-policy-invalid", f"policy max_age {max_age} is out of range")
    mx = tuple(fields.get("mx", ()))
    if mode != "none" and not mx:
        raise PolicyError("sts-policy-invalid", "policy lists no mx")
    return Policy(policy_id, mode, mx, max_age, text)


def txt_id(values: list[str]) -> str | None:
    """The id of the one ``v=STSv1`` record (RFC 8461 3.1), or None."""
    ours = [v for v in values if v.startswith("v=STSv1")]
    if len(ours) != 1:
        return None
    tags = dict(t.strip().partition("=")[::2] for t in ours[0].split(";") if "=" in t)
    pid = tags.get("id", "").strip()
    return pid if pid and len(pid) <= 32 and pid.isalnum() else None


class Cache:
    """Policies by domain in STATE_DIR/mta-sts.sqlite3."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10)
        enable_wal(db)
        db.execute("CREATE TABLE IF NOT EXISTS policy (domain TEXT PRIMARY KEY, id TEXT NOT NULL, "
                   "text TEXT NOT NULL, fetched REAL NOT NULL, max_age INTEGER NOT NULL)")
        return db

    def get(self, domain: str, now: float | None = None) -> Policy | None:
        now = time.time() if now is None else now
        db = self._db()
        try:
            row = db.execute("SELECT id, text, fetched, max_age FROM policy WHERE domain = ?", (domain,)).fetchone()
        finally:
            db.close()
        if row is None or row[2] + row[3] < now:
            return None
        try:
            return parse(row[1], row[0])
        except PolicyError:
            return None

    def put(self, domain: str, policy: Policy, now: float | None = None) -> None:
        db = self._db()
        try:
            with db:
                db.execute("INSERT OR REPLACE INTO policy VALUES (?, ?, ?, ?, ?)",
                           (domain, policy.id, policy.text, time.time() if now is None else now, policy.max_age))
        finally:
            db.close()


def fetch(domain: str, address: str, ca_file: str, port: int = HTTPS_PORT) -> str:
    """The policy text from https://mta-sts.DOMAIN/.well-known/mta-sts.txt, dialled at ADDRESS (blocking)."""
    host = f"mta-sts.{domain}"
    ctx = ssl.create_default_context(cafile=ca_file or None)  # PKIX for HOST (RFC 8461 3.3)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    conn = _Https(host, address, port, ctx)
    try:
        conn.request("GET", "/.well-known/mta-sts.txt", headers={"Host": host, "User-Agent": "isp-mail-appliance"})
        resp = conn.getresponse()
        if resp.status != 200:  # 3xx included: redirects MUST NOT be followed
            raise PolicyError("sts-policy-fetch-error", f"https://{host}/.well-known/mta-sts.txt: HTTP {resp.status}")
        ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "text/plain":
            raise PolicyError("sts-policy-invalid", f"https://{host}/.well-known/mta-sts.txt: type {ctype!r}")
        body = resp.read(MAX_POLICY_BYTES + 1)
        if len(body) > MAX_POLICY_BYTES:
            raise PolicyError("sts-policy-invalid", f"https://{host}/.well-known/mta-sts.txt: over 64 KiB")
        return body.decode("utf-8", errors="replace")
    except ssl.SSLCertVerificationError as exc:
        raise PolicyError("sts-webpki-invalid", f"https://{host}: {exc.verify_message}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise PolicyError("sts-policy-fetch-error", f"https://{host}: {exc}") from None
    finally:
        conn.close()


class _Https(http.client.HTTPSConnection):
    """Dial the address our resolver gave; verify the certificate for the policy host's name."""

    def __init__(self, host: str, address: str, port: int, ctx: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=FETCH_TIMEOUT, context=ctx)
        self._address, self._ctx = address, ctx

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self.host)


async def find(domain: str, res: dns.asyncresolver.Resolver, cache: Cache, ca_file: str,
               port: int = HTTPS_PORT) -> Found:
    """The policy in force for DOMAIN (RFC 8461 5.1), fetching when the TXT id is new.

    Runs in the relay's event loop: the cache (SQLite) and the fetch run in threads.
    """
    cached = await asyncio.to_thread(cache.get, domain)
    try:
        pid = txt_id(txt_strings((await lookup(res, f"_mta-sts.{domain}", "TXT")).records))
    except LookupFailed:
        return Found(cached)  # DNS trouble: the cached policy (if any) stays in force
    if pid is None or (cached is not None and cached.id == pid):
        return Found(cached)
    try:
        addrs = (await lookup(res, f"mta-sts.{domain}", "A")).records or \
            (await lookup(res, f"mta-sts.{domain}", "AAAA")).records
        if not addrs:
            raise PolicyError("sts-policy-fetch-error", f"mta-sts.{domain} has no address")
        text = await asyncio.to_thread(fetch, domain, addrs[0].to_text(), ca_file, port)  # type: ignore[attr-defined]
        policy = parse(text, pid)
    except LookupFailed as exc:
        return Found(cached, PolicyError("sts-policy-fetch-error", str(exc)))
    except PolicyError as exc:
        return Found(cached, exc)
    await asyncio.to_thread(cache.put, domain, policy)
    return Found(policy)
