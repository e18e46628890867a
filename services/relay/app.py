"""The relay process: listeners, policy, spool and delivery in one event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import logging
import os
import signal
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from prometheus_client import REGISTRY

from appliance import metrics
from appliance.accounts import Account, open_accounts
from appliance.catalog import built_services
from appliance.config import Config
from appliance.delivery import DeliveryManager
from appliance.delivery.usage import UsageCache
from appliance.message import DkimSigner
from appliance.policy import pipeline as policy_pipeline
from appliance.ratelimit import runtime as limits_runtime
from appliance.spool import Spool
from appliance.watchdog import ServiceStateCollector
from services.relay.internal import InternalSMTP
from services.relay.pinned_tls import PinnedClientCertContext
from services.relay.registry_watch import RegistryHolder
from services.relay.smtp import RelayHandler, RelaySMTP
from services.relay.tls import server_context

log = logging.getLogger("relay")
T = TypeVar("T")

LOOP_DB_TIMEOUT = 1.0  # seconds the event loop's accounts reads may wait for SQLite's lock
SHUTDOWN_GRACE = 10.0  # seconds in-flight sessions get to finish when the relay stops


class StartupError(Exception):
    """Something the relay needs is missing or unusable; one line, the process exits before listening."""


M_ARENA_MAX = -8  # glibc's mallopt() parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MALLOC_ARENAS = 2
# Blocks of message data (64 KB and up) get their own mappings, returned to the system when freed,
# instead of fragmenting the heap (glibc's default threshold grows up to 32 MB). 25 MB through 20
# sessions (tests/relay_front/test_stream_memory.py): peak RSS 89-90 MB, 96-99 MB without; 98 MB
# with 256 KB.
MMAP_THRESHOLD = 64 * 1024


def _limit_malloc_arenas() -> None:
    """Few glibc malloc arenas: the spool, delivery and auth threads each allocating message blocks
    would otherwise each keep an arena of freed blocks (about 20 MB more RSS under 20 large transfers).
    Set before those threads exist; a no-op without glibc."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


class RelayApp:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        _limit_malloc_arenas()
        # Files that must be usable first: a bad one stops the relay with one line.
        self.tls_plain: ssl.SSLContext = server_context(cfg)
        self.tls_client_cert = PinnedClientCertContext(cfg.tls.cert, cfg.tls.key)
        # The fleet's box pins (fleet.boxes.*.spki_sha256): fixed for the relay's life (config is not
        # reloaded), so computed once here rather than per connection.
        self.fleet_box_pins = cfg.fleet.box_pins()
        self.signer = self._signer(cfg)
        # Read in the event loop by the policy checks (account, aliases): a short lock wait, so a
        # stall is bounded (a timeout is a 451 from the pipeline). Writes never use this store.
        self.accounts = open_accounts(cfg, busy_timeout=LOOP_DB_TIMEOUT)
        self.registry = RegistryHolder(cfg.registry_dir, tuf=bool(cfg.registry.url))
        self.registry.reload(force=True)
        # Mailbox usage (quota): counted by local delivery, read by the RCPT check (appliance/delivery/usage.py).
        self.usage = UsageCache()
        self.pipeline = policy_pipeline.build(policy_pipeline.PolicyContext(cfg, self.accounts, self.usage))
        self.handler = RelayHandler(self)
        self.spool = Spool(Path(cfg.paths.spool_dir))
        self.delivery: DeliveryManager | None = None
        self.sessions: set[RelaySMTP] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self._tasks: list[asyncio.Task[None]] = []
        # argon2 is slow on purpose: verify passwords off the event loop, each
        # thread with its own SQLite connection.
        self._auth_pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="auth")
        self._auth_local = threading.local()
        # Accounts reads for the policy (account before MAIL, recipient owner before RCPT);
        # each thread has its own SQLite connection (AccountStore is per-thread).
        self._reader_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="accounts-read")
        self.stopping = asyncio.Event()

    @staticmethod
    def _signer(cfg: Config) -> DkimSigner | None:
        try:
            key = Path(cfg.dkim.key).read_bytes()
        except OSError as exc:
            raise StartupError(f"dkim.key ({cfg.dkim.key}): cannot read: {exc.strerror}") from None
        return DkimSigner(cfg.dkim.selector, key, cfg.dkim_domains())

    def _authenticate_sync(self, login: str, password: str) -> Account | None:
        store = getattr(self._auth_local, "store", None)
        if store is None:
            store = self._auth_local.store = open_accounts(self.cfg)
        return store.authenticate(login, password)

    async def read_accounts(self, fn: Callable[..., T], *args: object) -> T:
        """Run an accounts-database read in the reader pool: never in the event loop (appliance/accounts.py)."""
        return await self.loop.run_in_executor(self._reader_pool, fn, *args)

    async def authenticate(self, login: str, password: str) -> Account | None:
        return await self.loop.run_in_executor(self._auth_pool, self._authenticate_sync, login, password)

    # --- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self.spool.relay_running():
            raise StartupError(f"{self.spool.dir}: another relay process is using this spool")
        # The quick part of recovery before listening (tmp/ and incoming/ are cleaned, files pre-created);
        # the delivery manager verifies queue/ while the relay already listens, and delivers after.
        rep = await asyncio.to_thread(self.spool.prepare)
        if rep.corrupt:
            log.error("quarantined %d corrupt queue file(s) into %s", len(rep.corrupt), self.spool.corrupt_dir)
        self.delivery = DeliveryManager(self.cfg, self.spool, lambda: self.registry.snapshot, usage=self.usage)
        # Outbound pacing: never faster than a destination member's published limits (appliance/ratelimit).
        self.delivery.before_connect = limits_runtime.for_config(self.cfg).pacer.hook(lambda: self.registry.snapshot)
        self._tasks.append(asyncio.create_task(self._run_delivery(), name="delivery"))
        self._tasks.append(asyncio.create_task(self.registry.watch(), name="registry-watch"))
        self.loop.add_signal_handler(signal.SIGHUP, lambda: self.registry.reload(force=True))
        await self._listen()

    async def _run_delivery(self) -> None:
        assert self.delivery is not None
        try:
            await self.delivery.run()
        except Exception:
            # Without delivery nothing leaves the queue: stop, supervisor restarts us.
            log.exception("delivery manager stopped")
            self.stopping.set()

    async def _listen(self) -> None:
        cfg = self.cfg
        ls = cfg.listeners
        try:
            for name in ("mx", "submission", "submissions"):
                lst = getattr(ls, name)
                if not lst.enabled:
                    continue
                implicit = lst.tls == "implicit"

                def factory(name: str = name, starttls: bool = lst.tls == "starttls",
                            implicit: bool = implicit) -> RelaySMTP:
                    return RelaySMTP(self, name, starttls=starttls, implicit_tls=implicit)

                server = await self.loop.create_server(
                    factory, host=lst.host, port=lst.port, reuse_address=True,
                    ssl=self.tls_plain if implicit else None,
                )
                self.servers.append(server)
                log.info("listening: %s %s:%d tls=%s", name, lst.host, lst.port, lst.tls)
            sock_path = cfg.paths.internal_socket
            sock_path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                sock_path.unlink()
            server = await self.loop.create_unix_server(lambda: InternalSMTP(self), path=str(sock_path))
            # Who may connect is decided by SO_PEERCRED; the mode only keeps other users from trying.
            os.chmod(sock_path, 0o666 if cfg.relay.internal_allowed_uids else 0o600)
            self.servers.append(server)
            log.info("listening: internal %s", sock_path)
            if ls.metrics.enabled:
                # Service states (FATAL, flapping, not running) from the watchdog, on the same /metrics.
                REGISTRY.register(ServiceStateCollector(Path(cfg.paths.run_dir), [s.name for s in built_services()]))
                metrics.serve(ls.metrics.host, ls.metrics.port)
                log.info("metrics: http://%s:%d/metrics", ls.metrics.host, ls.metrics.port)
        except OSError as exc:
            raise StartupError(f"cannot listen: {exc}") from None

    async def stop(self) -> None:
        for s in self.servers:
            s.close()
        # Let sessions in the middle of a transaction finish, then cut the rest.
        deadline = self.loop.time() + SHUTDOWN_GRACE
        while self.sessions and self.loop.time() < deadline:
            await asyncio.sleep(0.1)
        if self.sessions:
            log.info("closing %d session(s) still open after %.0f s: %s", len(self.sessions), SHUTDOWN_GRACE,
                     ", ".join(f"{s.listener}/{s.psession.client_ip if s.psession else '?'}" for s in self.sessions))
        for sess in list(self.sessions):
            if sess.transport is not None:
                sess.transport.close()
        if self.delivery is not None:
            await self.delivery.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.spool.close()
        # The limiter's state is written behind (appliance/ratelimit/store.py): write the
        # last batch and any hold in flight now, so daily counts survive a clean restart.
        await asyncio.to_thread(limits_runtime.close_all)
        self._auth_pool.shutdown(wait=False, cancel_futures=True)
        self._reader_pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(OSError):
            self.cfg.paths.internal_socket.unlink()
