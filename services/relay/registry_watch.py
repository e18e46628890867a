"""The relay's registry snapshot: re-read when its files' mtimes change (every 2 s) and on SIGHUP.

The whole snapshot is swapped; a connection keeps the one it started with. A
registry that fails to load keeps the last good snapshot (never fails open).

Whether members are refused as "expired" (``421 4.7.0``, temporary) is decided
here, by the relay itself, so a dead sync agent cannot keep an old registry
alive. Members are refused while any of these holds:

- ``state.json`` (the sync agent's report) is missing, unreadable, not an
  object, has no ``expired`` field, or says ``"expired": true``;
- with a TUF repository configured (``registry.url``): the verified metadata
  in ``REGISTRY_DIR/tuf/`` (ngclient's trusted cache) cannot be read, or its
  earliest expiry has passed. This is checked at every connection against the
  clock, not only when a file changes: an agent that stopped months ago leaves
  files that never change, and the timestamp role's short expiry (7 days by
  default) still takes effect.

Customers (ports 587/465, IMAP/POP sends) are not affected by any of this.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

from tuf.api.exceptions import RepositoryError

from appliance import metrics
from appliance.registry.model import Registry, RegistryError, load
from appliance.registry.trusted import trusted_expiry

log = logging.getLogger("relay.registry")
POLL_SECONDS = 2.0
TUF_ROLES = ("root", "timestamp", "snapshot", "targets")


class RegistryHolder:
    def __init__(self, directory: Path, *, tuf: bool = True) -> None:
        """TUF: a TUF repository is configured, so its verified metadata's expiry is enforced."""
        self.path = directory / "registry.json"
        self.state_path = directory / "state.json"
        self.tuf_dir = directory / "tuf"
        self.tuf = tuf
        self.snapshot: Registry | None = None
        # Until the files have been read, members are refused.
        self._state_expired = True
        self._state_reason = "state.json not read yet"
        self._expires: float | None = None  # earliest expiry of the verified metadata (epoch seconds)
        self._expires_reason = "verified metadata not read yet"
        self._seen: tuple[int | None, ...] | None = None
        self._last_reported: str | None = ""  # "" : nothing reported yet

    @staticmethod
    def _mtime(p: Path) -> int | None:
        try:
            return p.stat().st_mtime_ns
        except OSError:
            return None

    def _files(self) -> tuple[Path, ...]:
        tuf = tuple(self.tuf_dir / f"{r}.json" for r in TUF_ROLES) if self.tuf else ()
        return (self.path, self.state_path, *tuf)

    def reload(self, force: bool = False) -> None:
        seen = tuple(self._mtime(p) for p in self._files())
        if seen == self._seen and not force:
            self._report()
            return
        if force or self._seen is None or seen[0] != self._seen[0]:
            self._load_registry()
        self._load_state()
        if self.tuf:
            self._load_expiry()
        self._seen = seen
        self._report()

    # --- why members are refused -------------------------------------------------------------

    def expired_reason(self, now: float | None = None) -> str | None:
        """Why members get 421 now, or None when the registry is current."""
        if self._state_expired:
            return self._state_reason
        if self.tuf:
            if self._expires is None:
                return self._expires_reason
            if (time.time() if now is None else now) >= self._expires:
                return f"verified registry metadata expired at {_iso(self._expires)}"
        return None

    @property
    def expired(self) -> bool:
        return self.expired_reason() is not None

    def _report(self) -> None:
        """Log and export each change of the expired state (checked at every poll, so a clock passing
        the expiry is reported even though no file changed)."""
        reason = self.expired_reason()
        if reason != self._last_reported:
            if reason is None:
                log.warning("registry current: members accepted again")
            else:
                log.error("registry expired: members get 421 4.7.0 (%s)", reason)
            self._last_reported = reason
        metrics.REGISTRY_EXPIRED.set(0 if reason is None else 1)

    # --- loading -----------------------------------------------------------------------------

    def _load_registry(self) -> None:
        try:
            snap = load(self.path)
        except FileNotFoundError:
            log.error("%s: no registry on disk; port 25 answers 421 until one arrives", self.path)
            metrics.REGISTRY_RELOADS.labels("failed").inc()
            return
        except (OSError, RegistryError) as exc:
            log.error("%s: not loaded, keeping the previous snapshot: %s", self.path, exc)
            metrics.REGISTRY_RELOADS.labels("failed").inc()
            return
        self.snapshot = snap
        metrics.REGISTRY_RELOADS.labels("ok").inc()
        metrics.REGISTRY_MEMBERS.set(len(snap.members))
        log.info("registry loaded: %d members", len(snap.members))

    def _load_state(self) -> None:
        # Fail closed: no report from the agent (stopped, crashed, file deleted or corrupt) means
        # nobody vouches that the registry is current.
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            self._set_state(True, f"{self.state_path} missing (is registry-sync running?)")
            return
        except (OSError, ValueError) as exc:
            self._set_state(True, f"{self.state_path} unreadable: {exc}")
            return
        if not isinstance(state, dict) or not isinstance(state.get("expired"), bool):
            self._set_state(True, f"{self.state_path} has no expired flag")
            return
        if state["expired"]:
            self._set_state(True, f"the sync agent reports it expired: {state.get('alarm') or 'no reason given'}")
        else:
            self._set_state(False, "")

    def _set_state(self, expired: bool, reason: str) -> None:
        self._state_expired, self._state_reason = expired, reason

    def _load_expiry(self) -> None:
        try:
            self._expires = trusted_expiry(self.tuf_dir).timestamp()
            self._expires_reason = ""
        except (OSError, ValueError, KeyError, TypeError, RepositoryError) as exc:
            # Metadata.from_file raises DeserializationError (a RepositoryError) on corrupt files.
            self._expires = None
            self._expires_reason = f"verified metadata in {self.tuf_dir} unreadable: {type(exc).__name__}: {exc}"

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                self.reload()
            except Exception:  # keep watching whatever happens
                log.exception("registry reload failed")


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
