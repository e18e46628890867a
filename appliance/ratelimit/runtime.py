"""The relay process's one set of limiter state, shared by every check and the delivery side.

``for_config(cfg)`` returns the same ``LimitRuntime`` for the same ``Config``
object, so the limits check, the abuse check, XAUTHCHECK/XAUTHFAIL and the
delivery workers all count against one limiter (DESIGN.md "One policy point").
"""

from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.accounts import AccountStore, open_accounts
from appliance.config import Config
from appliance.ratelimit.brake import AbuseBrake
from appliance.ratelimit.clock import SYSTEM_CLOCK, Clock
from appliance.ratelimit.gcra import Gcra
from appliance.ratelimit.limiter import Limiter
from appliance.ratelimit.pacer import Pacer

if TYPE_CHECKING:
    from appliance.accounts_pg import PgAccountStore
    from appliance.ratelimit.shared import SharedBrakeWindow


class LazyAccounts:
    """The brake's own accounts connection, opened the first time it holds someone."""

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg
        self._store: AccountStore | PgAccountStore | None = None

    def hold(self, address: str, reason: str) -> bool:
        if self._store is None:
            self._store = open_accounts(self._cfg)  # SQLite or the fleet's PostgreSQL (state.backend)
        return self._store.hold(address, reason)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


@dataclass
class LimitRuntime:
    cfg: Config
    limiter: Limiter
    brake: AbuseBrake
    pacer: Pacer
    accounts: LazyAccounts | AccountStore

    writer: concurrent.futures.ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.shutdown(wait=True)  # holds in flight are written first (they read the store)
        self.limiter.close()  # then the limiter's last batch
        self.accounts.close()


_lock = threading.Lock()
_runtimes: dict[int, tuple[Config, LimitRuntime]] = {}


def build(cfg: Config, clock: Clock = SYSTEM_CLOCK) -> LimitRuntime:
    limiter = Limiter.open(cfg, clock)
    # Its own connection, in one writer thread: a hold waits for the accounts database's
    # write lock there, never in the relay's event loop.
    accounts = LazyAccounts(cfg)
    writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="brake-writer")
    brake = AbuseBrake(cfg, limiter.store, accounts, clock, writer=writer,  # type: ignore[arg-type]
                       shared_window=_brake_window(limiter, clock))
    return LimitRuntime(cfg, limiter, brake, Pacer(cfg, clock, gcra=_pacer_gcra(limiter, clock)), accounts, writer)


def _brake_window(limiter: Limiter, clock: Clock) -> SharedBrakeWindow | None:
    """The fleet's abuse-brake window when the limiter is shared, else None (the brake's own memory)."""
    if limiter.cfg.state.backend != "shared":
        return None
    from appliance.ratelimit.shared import SharedBrakeWindow
    from appliance.ratelimit.shared_limiter import SharedLimiter

    assert isinstance(limiter, SharedLimiter)
    return SharedBrakeWindow(limiter.state, clock.time)


def _pacer_gcra(limiter: Limiter, clock: Clock) -> Gcra | None:
    """The fleet's pacing table when the limiter is shared (docs/fleet.md), else None (the pacer's own)."""
    if limiter.cfg.state.backend != "shared":
        return None
    from appliance.ratelimit.shared import SharedGcra
    from appliance.ratelimit.shared_limiter import FallbackGcra, SharedLimiter

    assert isinstance(limiter, SharedLimiter)
    return FallbackGcra(SharedGcra(limiter.state, "pace", clock.time), Gcra(clock.monotonic))  # type: ignore[return-value]


def for_config(cfg: Config) -> LimitRuntime:
    with _lock:
        hit = _runtimes.get(id(cfg))
        if hit is not None and hit[0] is cfg:
            return hit[1]
        rt = build(cfg)
        _runtimes[id(cfg)] = (cfg, rt)  # the Config is kept alive, so its id is not reused
        return rt


def install(cfg: Config, runtime: LimitRuntime) -> None:
    """Use RUNTIME for CFG (tests and benchmarks: a runtime built with a manual clock)."""
    with _lock:
        _runtimes[id(cfg)] = (cfg, runtime)


def close_all() -> None:
    with _lock:
        for _, rt in _runtimes.values():
            rt.close()
        _runtimes.clear()
