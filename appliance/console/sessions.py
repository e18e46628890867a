"""Console logins: server-side sessions with one CSRF token each, and the login form's token.

The cookie holds 32 random bytes; the database only their SHA-256. Each session has its own
CSRF token, checked on every POST (a form field compared in constant time). The login form,
which comes before any session, carries an HMAC of a random pre-login cookie under the box's
console key (double-submit), so a login cannot be forced from another site either.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from appliance import fsutil
from appliance.console import connect

LIFETIME = 8 * 3600  # seconds a login lasts, whatever is done meanwhile
MAX_SESSIONS = 1000  # a cap on what logins can grow; the oldest go first


@dataclass(frozen=True)
class Session:
    login: str
    role: str  # "admin" or "customer"
    csrf: str
    client_ip: str
    expires: float


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    def __init__(self, db: Path) -> None:
        self.db = db

    def create(self, login: str, role: str, client_ip: str, now: float | None = None) -> tuple[str, Session]:
        """A new session; returns the cookie value (shown to nobody else) and the session."""
        now = time.time() if now is None else now
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        s = Session(login, role, csrf, client_ip, now + LIFETIME)
        with connect(self.db) as db:
            db.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
            db.execute("DELETE FROM sessions WHERE token_hash IN (SELECT token_hash FROM sessions "
                       "ORDER BY created DESC LIMIT -1 OFFSET ?)", (MAX_SESSIONS - 1,))
            db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (_hash(token), login, role, csrf, client_ip, now, s.expires))
        return token, s

    def get(self, token: str | None, now: float | None = None) -> Session | None:
        if not token or len(token) > 100:
            return None
        now = time.time() if now is None else now
        with connect(self.db) as db:
            row = db.execute("SELECT login, role, csrf, client_ip, expires FROM sessions "
                             "WHERE token_hash = ? AND expires > ?", (_hash(token), now)).fetchone()
        return Session(*row) if row else None

    def delete(self, token: str | None) -> None:
        if token:
            with connect(self.db) as db:
                db.execute("DELETE FROM sessions WHERE token_hash = ?", (_hash(token),))

    def delete_login(self, login: str) -> None:
        """Log LOGIN out everywhere (after its password was changed or it was disabled)."""
        with connect(self.db) as db:
            db.execute("DELETE FROM sessions WHERE login = ?", (login,))


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


class LoginTokens:
    """The login form's CSRF token: HMAC-SHA256(console key, pre-login cookie)."""

    def __init__(self, key_file: Path) -> None:
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            fsutil.atomic_write(key_file, secrets.token_bytes(32), mode=0o600)
        self._key = key_file.read_bytes()

    def new_cookie(self) -> str:
        return secrets.token_urlsafe(24)

    def token_for(self, cookie: str) -> str:
        return hmac.new(self._key, cookie.encode(), hashlib.sha256).hexdigest()

    def check(self, cookie: str | None, token: str | None) -> bool:
        return bool(cookie) and len(cookie or "") <= 100 and csrf_ok(self.token_for(cookie or ""), token)
