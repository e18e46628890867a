"""Outbound pacing: a destination member never gets more than its published rate; domain concurrency is capped."""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance.delivery.routing import Destination
from appliance.ratelimit.clock import ManualClock
from appliance.ratelimit.pacer import Pacer
from appliance.registry.model import Member, MemberLimits, Registry
from tests.ratelimit.conftest import make_config

SLOW = Member("slow", "Slow ISP", "active", "", ("slow.example",), (), MemberLimits(30, 2, 5))


def pacer_with_clock(tmp: Path, concurrency: int = 10) -> tuple[Pacer, ManualClock, list[float]]:
    clock = ManualClock()
    sends: list[float] = []

    async def sleep(seconds: float) -> None:  # time passes only when the pacer waits
        clock.advance(seconds)

    cfg = make_config(tmp, relay={"destination_concurrency": concurrency})
    return Pacer(cfg, clock, sleep), clock, sends


def test_member_destination_paced_to_its_published_rate(tmp_path: Path) -> None:
    pacer, clock, sends = pacer_with_clock(tmp_path)
    hook = pacer.hook(lambda: Registry("c", "1", (SLOW,)))

    async def deliver_many() -> None:
        for _ in range(6):
            await hook(Destination("member", "member:slow", member_id="slow", domain="slow.example"))
            sends.append(clock.monotonic())

    asyncio.run(deliver_many())
    start = sends[0]
    # 30/min burst 2: two at once, then one every 2 s; never more than 2 + t/2 by time t.
    assert [round(t - start, 6) for t in sends] == [0, 0, 2, 4, 6, 8]


def test_other_destinations_are_not_paced(tmp_path: Path) -> None:
    pacer, clock, _ = pacer_with_clock(tmp_path)
    hook = pacer.hook(lambda: Registry("c", "1", (SLOW,)))

    async def go() -> None:
        for _ in range(50):
            await hook(Destination("mx", "mx:outside.example", domain="outside.example"))
            await hook(Destination("member", "member:gone", member_id="gone", domain="gone.example"))

    asyncio.run(go())
    assert clock.monotonic() == ManualClock().monotonic()


def test_domain_concurrency_capped(tmp_path: Path) -> None:
    pacer, _, _ = pacer_with_clock(tmp_path, concurrency=3)
    peak = 0

    async def one() -> None:
        nonlocal peak
        async with pacer.slot("outside.example", None):
            peak = max(peak, pacer.active("outside.example"))
            await asyncio.sleep(0)

    async def go() -> None:
        await asyncio.gather(*(one() for _ in range(20)))

    asyncio.run(go())
    assert peak == 3
    assert pacer.active("outside.example") == 0
