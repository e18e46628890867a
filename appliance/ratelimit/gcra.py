"""GCRA (generic cell rate algorithm): a rate plus a burst, one timestamp per key.

For a rate of R per minute the emission interval is ``T = 60 / R`` seconds and a
burst of B lets B units through at once: the key's theoretical arrival time
(TAT) may run at most ``B * T`` ahead of now. A request of cost c is allowed
when ``max(TAT, now) + c*T - now <= B*T``; otherwise it may retry in exactly
``max(TAT, now) + c*T - B*T - now`` seconds. Over any interval of length W at
most ``B + W / T`` units pass, so a sender limited to N per minute gets at most
N plus its burst in any minute.

State is a dict of floats in memory (the relay is one process); a key whose TAT
lies in the past is equivalent to a fresh key, so such entries are swept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# A flood that keeps counting (connections, AUTH failures) must not push a key's
# TAT arbitrarily far ahead: the debt is capped at this many burst windows.
MAX_DEBT_WINDOWS = 2.0
_SWEEP_EVERY = 4096


@dataclass(frozen=True)
class Rate:
    """``per_minute`` sustained, ``burst`` at once."""

    per_minute: float
    burst: int

    def __post_init__(self) -> None:
        if not self.per_minute > 0 or self.burst < 1:
            raise ValueError(f"rate must be > 0 per minute with burst >= 1, not {self.per_minute}/{self.burst}")

    @property
    def interval(self) -> float:
        return 60.0 / self.per_minute

    @property
    def capacity(self) -> float:
        return self.burst * self.interval

    def describe(self) -> str:
        return f"{self.per_minute:g}/min burst {self.burst}"


class Gcra:
    """One table of keys sharing a clock. Not thread-safe: the relay's event loop owns it."""

    __slots__ = ("_now", "_tat", "_ops")

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._tat: dict[str, float] = {}
        self._ops = 0

    def __len__(self) -> int:
        return len(self._tat)

    def _after(self, key: str, rate: Rate, cost: float) -> tuple[float, float]:
        """Now, and KEY's TAT once COST more units are counted (a TAT in the past counts from now)."""
        now = self._now()
        tat = self._tat.get(key, now)
        return now, max(tat, now) + cost * rate.interval

    def peek(self, key: str, rate: Rate, cost: float = 1) -> float:
        """Seconds until COST units would pass (0.0: they would pass now). Changes nothing."""
        now, new = self._after(key, rate, cost)
        over = new - now - rate.capacity
        return over if over > 1e-9 else 0.0

    def take(self, key: str, rate: Rate, cost: float = 1) -> float:
        """Consume COST units if they pass now (returns 0.0); else change nothing and return the wait."""
        now, new = self._after(key, rate, cost)
        over = new - now - rate.capacity
        if over > 1e-9:
            return over
        self._tat[key] = new
        self._maybe_sweep(now)
        return 0.0

    def hit(self, key: str, rate: Rate, cost: float = 1) -> float:
        """Count COST units whether or not they pass (every attempt counts); return the wait, 0.0 if within limit."""
        now, new = self._after(key, rate, cost)
        over = new - now - rate.capacity
        self._tat[key] = min(new, now + rate.capacity * MAX_DEBT_WINDOWS)
        self._maybe_sweep(now)
        return over if over > 1e-9 else 0.0

    def schedule(self, key: str, rate: Rate, cost: float = 1) -> float:
        """Reserve the next slot for COST units and return how long to wait before using it (pacing)."""
        now, new = self._after(key, rate, cost)
        self._tat[key] = new
        self._maybe_sweep(now)
        wait = new - now - rate.capacity
        return wait if wait > 1e-9 else 0.0

    def refund(self, key: str, rate: Rate, cost: float = 1) -> None:
        """Give back COST units taken earlier (a reserved message that was not accepted after all)."""
        tat = self._tat.get(key)
        if tat is not None:
            self._tat[key] = tat - cost * rate.interval

    def reset(self, key: str) -> None:
        self._tat.pop(key, None)

    def _maybe_sweep(self, now: float) -> None:
        self._ops += 1
        if self._ops >= _SWEEP_EVERY:
            self._ops = 0
            stale = [k for k, t in self._tat.items() if t <= now]
            for k in stale:
                del self._tat[k]
