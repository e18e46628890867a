"""Outbound pacing for the delivery side.

- Per destination **member**: never send faster than the receiving member
  publishes in the registry (``limits.messages_per_minute`` / ``burst``, else
  ``limits.member_default_*``), so our mail is never the cause of its 450s.
- Per destination **domain**: at most ``relay.destination_concurrency``
  deliveries at once.

The relay's ``DeliveryManager`` already caps concurrency per destination
(``relay.destination_concurrency``); it awaits ``pacer.hook(registry)`` before
each connection to a destination, which paces member destinations. Other
callers can use ``async with pacer.slot(domain, member):`` around one delivery
(waits for both), or ``pacer.delay(member)`` to reserve the next send slot and
learn how long to wait, for a scheduler that would rather re-queue than sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from appliance.config import Config
from appliance.ratelimit.clock import SYSTEM_CLOCK, Clock
from appliance.ratelimit.gcra import Gcra, Rate
from appliance.ratelimit.keys import domain_key, member_key
from appliance.registry.model import Member, Registry

if TYPE_CHECKING:
    from appliance.delivery.routing import Destination


class Pacer:
    def __init__(
        self,
        cfg: Config,
        clock: Clock = SYSTEM_CLOCK,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        gcra: Gcra | None = None,
    ) -> None:
        # GCRA: this box's own, or the fleet's (shared_limiter.FallbackGcra over Redis) so that two relays
        # together keep to a destination member's published rate.
        self._gcra = gcra if gcra is not None else Gcra(clock.monotonic)
        self._default = Rate(cfg.limits.member_default_per_minute, cfg.limits.member_default_burst)
        self._concurrency = cfg.relay.destination_concurrency
        self._domains: dict[str, asyncio.Semaphore] = {}
        self._active: dict[str, int] = {}
        self._sleep = sleep

    def rate_for(self, member: Member) -> Rate:
        if member.limits is None:
            return self._default
        return Rate(member.limits.messages_per_minute, member.limits.burst)

    def delay(self, member: Member | None) -> float:
        """Reserve the next send slot to MEMBER; seconds to wait before using it (0.0: now)."""
        if member is None:
            return 0.0
        return self._gcra.schedule(member_key(member.id), self.rate_for(member))

    def active(self, domain: str) -> int:
        return self._active.get(domain_key(domain), 0)

    @asynccontextmanager
    async def slot(self, domain: str, member: Member | None) -> AsyncIterator[None]:
        """One delivery to DOMAIN (owned by MEMBER, or None outside the consortium)."""
        key = domain_key(domain)
        sem = self._domains.get(key)
        if sem is None:
            sem = self._domains[key] = asyncio.Semaphore(self._concurrency)
        async with sem:
            self._active[key] = self._active.get(key, 0) + 1
            try:
                wait = self.delay(member)
                if wait:
                    await self._sleep(wait)
                yield
            finally:
                self._active[key] -= 1
                if not self._active[key]:
                    del self._active[key]

    def hook(self, registry: Callable[[], Registry | None]) -> Callable[[Destination], Awaitable[None]]:
        """``DeliveryManager.before_connect``: wait for the destination member's next send slot."""

        async def before_connect(dest: Destination) -> None:
            if dest.kind != "member" or not dest.member_id:
                return
            snapshot = registry()
            member = snapshot.member(dest.member_id) if snapshot is not None else None
            if member is None:
                return
            wait = self.delay(member)
            if wait:
                await self._sleep(wait)

        return before_connect
