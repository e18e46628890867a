"""The relay's registry snapshot: re-read when registry.json's mtime changes (every 2 s) and on SIGHUP.

The whole snapshot is swapped; a connection keeps the one it started with. A
registry that fails to load keeps the last good snapshot (never fails open).
``state.json``'s ``"expired": true`` (written by the sync agent) makes members
get ``421 4.7.0``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from appliance import metrics
from appliance.registry.model import Registry, RegistryError, load

log = logging.getLogger("relay.registry")
POLL_SECONDS = 2.0


class RegistryHolder:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "registry.json"
        self.state_path = directory / "state.json"
        self.snapshot: Registry | None = None
        self.expired = False
        self._seen: tuple[float | None, float | None] = (None, None)

    @staticmethod
    def _mtime(p: Path) -> float | None:
        try:
            return p.stat().st_mtime_ns
        except OSError:
            return None

    def reload(self, force: bool = False) -> None:
        seen = (self._mtime(self.path), self._mtime(self.state_path))
        if seen == self._seen and not force:
            return
        if seen[0] != self._seen[0] or force:
            self._load_registry()
        self._load_state()
        self._seen = seen

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
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            state = {}
        except (OSError, ValueError) as exc:
            log.error("%s: unreadable, keeping expired=%s: %s", self.state_path, self.expired, exc)
            return
        expired = bool(state.get("expired", False)) if isinstance(state, dict) else False
        if expired != self.expired:
            log.warning("registry expired=%s (from %s)", expired, self.state_path)
        self.expired = expired
        metrics.REGISTRY_EXPIRED.set(1 if expired else 0)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                self.reload()
            except Exception:  # keep watching whatever happens
                log.exception("registry reload failed")
