"""The delivery workers: pick due messages from the spool, route each recipient, deliver, log, retry or bounce.

Runs inside the relay's asyncio loop. Blocking work (file I/O, smtplib) runs in
threads. Every recipient's final outcome is appended (fsynced) to the message's
log as soon as it is known, so after a crash only unfinished recipients are
retried. A permanent failure's DSN is stored in the spool *before* the failure
is logged: a crash in between sends the DSN twice rather than never.

Operator requests (`appliance queue flush | retry ID | delete ID | hold ID | release ID`)
arrive as files in SPOOL/control/, polled every CONTROL_POLL seconds. A hold is recorded in the
message's log by the CLI before it asks (so it survives a restart); a held entry stays queued and is
never attempted until released.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import heapq
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dns.asyncresolver

from appliance.accounts import AccountStore, open_accounts
from appliance.config import Config
from appliance.delivery import dsn, homes, smtpclient
from appliance.delivery.local import LocalDelivery
from appliance.delivery.mx import MxError, outbound_hops
from appliance.delivery.outcome import Outcome, deferred, failed
from appliance.delivery.routing import Destination, Route, route
from appliance.delivery.usage import UsageCache
from appliance.metrics import DELIVERIES
from appliance.registry.model import Registry
from appliance.spool import faults
from appliance.spool.format import SpooledMessage, SpoolFormatError
from appliance.spool.spool import Spool, SpoolError

if TYPE_CHECKING:
    from appliance.accounts_pg import PgAccountStore

log = logging.getLogger("appliance.delivery")

CONTROL_POLL = 0.5
# Attempts handed whole to the local delivery threads may be this many times delivery_workers: they
# wait in the threads' queue, not for the event loop. With at most delivery_workers attempts in
# flight, each delivery's round trip through the loop (shared with every SMTP session) capped
# local delivery at delivery_workers / round trip: 20 attempts waiting for the loop to see their
# result while the delivery threads sat idle (docs/benchmarks.md "Profile, third session").
LOCAL_DEPTH = 8
STOP_GRACE = 20.0
PacingHook = Callable[[Destination], Awaitable[None]]


def retry_delay(cfg: Config, attempts: int) -> float:
    """Backoff after the ATTEMPTS-th failed attempt: retry_initial doubling, capped at retry_max."""
    return float(min(cfg.relay.retry_initial * 2 ** max(0, attempts - 1), cfg.relay.retry_max))


@dataclass
class Entry:
    id: str
    sender: str
    recipients: tuple[str, ...]
    arrival: float
    meta: dict[str, Any]
    done: set[str] = field(default_factory=set)
    attempts: int = 0
    next: float = 0.0
    delay_sent: bool = False
    busy: bool = False
    deleted: bool = False
    held: bool = False  # `appliance queue hold`: never attempted until released
    why: dict[str, str] = field(default_factory=dict)  # last temporary error per recipient

    @property
    def pending(self) -> list[str]:
        seen: set[str] = set()
        out = []
        for r in self.recipients:
            if r not in self.done and r not in seen:
                seen.add(r)
                out.append(r)
        return out


def entry_from(msg: SpooledMessage, records: list[dict[str, Any]]) -> Entry:
    e = Entry(msg.id, msg.sender, msg.recipients, msg.arrival, msg.meta, next=0.0)
    for rec in records:
        if rec.get("s") in ("delivered", "failed") and "r" in rec:
            e.done.add(str(rec["r"]))
        elif rec.get("e") == "deferred":
            e.attempts = int(rec.get("attempts", e.attempts))
            e.next = float(rec.get("next", 0.0))
            e.why.update(rec.get("why") or {})
        elif rec.get("e") == "delay_dsn":
            e.delay_sent = True
        elif rec.get("e") == "hold":
            e.held = True
        elif rec.get("e") == "release":
            e.held, e.next = False, 0.0  # released: due now
    return e


class DeliveryManager:
    def __init__(
        self,
        cfg: Config,
        spool: Spool,
        registry_getter: Callable[[], Registry | None],
        *,
        resolver: dns.asyncresolver.Resolver | None = None,
        mx_port: int = 25,
        usage: UsageCache | None = None,
    ) -> None:
        self.cfg = cfg
        self.spool = spool
        self.registry_getter = registry_getter
        self.resolver = resolver
        self.mx_port = mx_port
        # Outbound pacing hook (rate limiter): awaited before each connection to a destination.
        self.before_connect: PacingHook | None = None
        self.stats = {"delivered": 0, "failed": 0, "deferred": 0, "dsn": 0}
        self._entries: dict[str, Entry] = {}
        self._heap: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._local_waiting = 0  # attempts waiting for the local delivery threads (see LOCAL_DEPTH)
        self._dest_sems: dict[str, asyncio.Semaphore] = {}
        self._local = LocalDelivery(cfg.paths.mail_dir, functools.partial(open_accounts, cfg),
                                    postmaster=cfg.box.postmaster_address, limit_classes=cfg.limits.classes,
                                    usage=usage,  # USAGE: shared with the relay's RCPT quota check
                                    threads=cfg.relay.delivery_workers)
        self._last_control = 0.0
        self._homes_store: AccountStore | PgAccountStore | None = None  # home-box lookups (fleet.boxes)
        # smtplib is blocking: its own threads, as many as deliveries may run at once.
        self._executor = concurrent.futures.ThreadPoolExecutor(cfg.relay.delivery_workers,
                                                               thread_name_prefix="delivery")

    # --- life cycle -------------------------------------------------------------------------

    async def run(self) -> None:
        if not self.spool.acquire_lock():
            raise SpoolError(f"{self.spool.dir}: another relay process is already delivering from this spool")
        try:
            # Listen first, then scan: a message stored meanwhile is seen by one or both, never by neither.
            self.spool.add_listener(self._on_stored)
            heads: dict[str, SpooledMessage] = {}
            if not getattr(self.spool, "recovered", False):
                # Each queued file is read and verified once, here, while the relay may already be
                # accepting mail; nothing is delivered before this is done.
                rep = await asyncio.to_thread(self.spool.verify_queue)
                heads = rep.heads
                if rep.corrupt:
                    log.error("quarantined %d corrupt queue file(s) in %s", len(rep.corrupt), self.spool.corrupt_dir)
            for e in await asyncio.to_thread(self._load_all, heads):
                if e.id not in self._entries:
                    self._entries[e.id] = e
                    heapq.heappush(self._heap, (e.next, e.id))
            await self._loop()
        finally:
            await self._drain()
            self._stopped.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), STOP_GRACE + 5)

    async def _drain(self) -> None:
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=STOP_GRACE)
            for t in pending:
                t.cancel()  # its recipients stay unfinished and are retried at the next start
        await asyncio.to_thread(smtpclient.POOL.close_all)
        await asyncio.to_thread(self._local.close)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.spool.release_lock()

    def _load_all(self, heads: dict[str, SpooledMessage]) -> list[Entry]:
        """Entries for every queued message with unfinished recipients (blocking; runs in a thread).

        HEADS are the envelopes recovery verified already (those files are not read again).
        """
        out: list[Entry] = []
        for qid in self.spool.ids():
            try:
                msg = heads.get(qid) or self.spool.load(qid, with_data=False)
            except FileNotFoundError:
                continue
            except SpoolFormatError as exc:
                log.error("quarantining %s: %s", qid, exc)
                self.spool.quarantine(qid)
                continue
            e = entry_from(msg, self.spool.read_log(qid))
            if not e.pending:
                self.spool.finish(qid)
                continue
            out.append(e)
        return out

    def _on_stored(self, msg: SpooledMessage) -> None:
        if msg.id in self._entries:
            return  # already picked up by the start-up scan
        e = Entry(msg.id, msg.sender, msg.recipients, msg.arrival, msg.meta, next=time.time())
        self._entries[msg.id] = e
        heapq.heappush(self._heap, (e.next, msg.id))
        self._wake.set()

    def queued(self) -> int:
        return len(self._entries)

    # --- scheduling -------------------------------------------------------------------------

    async def _loop(self) -> None:
        workers = self.cfg.relay.delivery_workers
        while not self._stopping:
            now = time.time()
            if now - self._last_control >= CONTROL_POLL:
                self._last_control = now
                self._control(await asyncio.to_thread(lambda: list(self.spool.take_requests())))
                smtpclient.POOL.reap()
            while self._heap and self._room(workers):
                when, qid = self._heap[0]
                if when > now:
                    break
                heapq.heappop(self._heap)
                e = self._entries.get(qid)
                if e is None or e.busy or e.held or e.next != when:
                    continue  # stale heap item, or held (release schedules it again)
                e.busy = True
                t = asyncio.create_task(self._attempt(e))
                self._tasks.add(t)
                t.add_done_callback(self._task_done)
            timeout = CONTROL_POLL
            if self._heap and self._room(workers):
                timeout = max(0.0, min(timeout, self._heap[0][0] - time.time()))
            if timeout > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()

    def _room(self, workers: int) -> bool:
        """May another attempt start? At most WORKERS of them doing anything but waiting for the
        local delivery threads (smtplib, DNS, reading), and WORKERS * LOCAL_DEPTH in all."""
        busy = len(self._tasks)
        return busy - self._local_waiting < workers and busy < workers * LOCAL_DEPTH

    def _task_done(self, t: asyncio.Task[None]) -> None:
        self._tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("delivery attempt crashed", exc_info=t.exception())
        self._wake.set()

    def _schedule(self, e: Entry, when: float) -> None:
        e.next = when
        heapq.heappush(self._heap, (when, e.id))

    def _control(self, requests: list[tuple[str, str]]) -> None:
        """Act on `appliance queue` requests (read from SPOOL/control/ in a thread, applied here in the loop)."""
        for action, qid in requests:
            now = time.time()
            if action == "flush":
                for e in list(self._entries.values()):
                    if not e.busy:
                        self._schedule(e, now)
            elif action == "retry" and (e := self._entries.get(qid)) is not None and not e.busy:
                self._schedule(e, now)  # (a held one is still skipped: release it)
            elif action == "hold" and (e := self._entries.get(qid)) is not None:
                e.held = True  # an attempt already running finishes; none starts after it
            elif action == "release" and (e := self._entries.get(qid)) is not None:
                e.held = False
                if not e.busy:
                    self._schedule(e, now)
            elif action == "retry" and qid not in self._entries and self.spool.path(qid).exists():
                # Stored by another process (`appliance tlsrpt send`): pick it up (one small header read).
                with contextlib.suppress(FileNotFoundError, SpoolFormatError):
                    self._on_stored(self.spool.load(qid, with_data=False))
            elif action == "delete":
                e = self._entries.get(qid)
                if e is not None and e.busy:
                    e.deleted = True
                else:
                    self._entries.pop(qid, None)
                    self.spool.delete(qid)
            log.info("queue request %s %s done", action, qid)

    # --- one attempt on one message ----------------------------------------------------------

    async def _attempt(self, e: Entry) -> None:
        try:
            await self._attempt_inner(e)
        except Exception:
            log.exception("delivery attempt for %s failed; retrying later", e.id)
            DELIVERIES.labels("deferred").inc(len(e.pending))
            e.attempts += 1
            self._schedule(e, time.time() + retry_delay(self.cfg, e.attempts))
        finally:
            e.busy = False
            if e.deleted:
                self._entries.pop(e.id, None)
                await asyncio.to_thread(self.spool.delete, e.id)

    async def _attempt_inner(self, e: Entry) -> None:
        registry = self._registry()
        groups: dict[str, tuple[Route, list[str]]] = {}
        for r in e.pending:
            rt = route(self.cfg, registry, r)
            groups.setdefault(rt.destination.key, (rt, []))[1].append(r)
        if self.cfg.fleet.boxes and any(rt.destination.kind == "local" for rt, _ in groups.values()):
            # Home boxes: local recipients whose Maildir is on another box go there (appliance/delivery/homes.py).
            groups = await asyncio.to_thread(homes.split_local, self.cfg, self._home_accounts(), groups)
        results: list[Outcome] = []
        unlogged: list[Outcome] = []
        local = [g for g in groups.values() if g[0].destination.kind == "local"]
        whole_local = len(groups) == 1 and bool(local)
        try:
            if whole_local:
                # Mail for this box's own mailboxes: read, delivered and (when every recipient is
                # delivered) removed from the spool by the local delivery thread, in one hand-off.
                # Not under destination_concurrency (a remote server's protection): local deliveries
                # are bounded by delivery_workers, the attempts in flight and the delivery threads.
                # Capped at 10, the delivery threads' batches could not grow (docs/benchmarks.md).
                _rt, rcpts = local[0]
                self._local_waiting += 1
                self._wake.set()  # room for another attempt (see _room)
                try:
                    done = await self._local.deliver_queued(self.spool, e.id, rcpts)
                finally:
                    self._local_waiting -= 1
                if done.finished:
                    self.stats["delivered"] += len(rcpts)
                    DELIVERIES.labels("delivered").inc(len(rcpts))
                    self._entries.pop(e.id, None)
                    return
                ok = [o for o in done.outcomes if o.status == "delivered"]
                unlogged.extend(ok)
                e.done.update(o.recipient for o in ok)
                results.extend(done.outcomes)
                msg = done.msg or await asyncio.to_thread(self.spool.load, e.id)
            else:
                # A held message is not read at all (it may be large, and held ones pile up).
                with_data = any(rt.destination.kind != "hold" for rt, _ in groups.values())
                msg = await asyncio.to_thread(self.spool.load, e.id, with_data=with_data)
        except FileNotFoundError:  # deleted by the operator
            self._entries.pop(e.id, None)
            return
        except SpoolFormatError as exc:
            log.error("quarantining %s: %s", e.id, exc)
            await asyncio.to_thread(self.spool.quarantine, e.id)
            self._entries.pop(e.id, None)
            return

        async def one(rt: Route, rcpts: list[str]) -> None:
            outs = await self._deliver_group(rt, rcpts, msg)
            faults.point("after_deliver")
            ok = [o for o in outs if o.status == "delivered"]
            if ok and len(groups) > 1:
                # Other destinations are still in flight: log these now, so a crash does not redeliver them.
                await asyncio.to_thread(self.spool.append_log, e.id, [o.record() for o in ok])
            else:
                unlogged.extend(ok)  # logged below unless the whole message is finished
            e.done.update(o.recipient for o in ok)
            results.extend(outs)

        if not whole_local:
            await asyncio.gather(*(one(rt, rcpts) for rt, rcpts in groups.values()))
        now = time.time()
        bad = [o for o in results if o.status == "failed"]
        later = [o for o in results if o.status == "deferred"]
        if later and now - e.arrival >= self.cfg.relay.max_lifetime:
            days = self.cfg.relay.max_lifetime / 86400
            bad += [Outcome(o.recipient, "failed", o.code, o.enhanced,
                            f"gave up after {days:g} days; last error: {o.text}", o.remote) for o in later]
            later = []
        self.stats["delivered"] += len(results) - len(bad) - len(later)
        self.stats["deferred"] += len(later)
        DELIVERIES.labels("delivered").inc(len(results) - len(bad) - len(later))
        DELIVERIES.labels("deferred").inc(len(later))
        DELIVERIES.labels("bounced").inc(len(bad))
        if bad:
            self.stats["failed"] += len(bad)
            self._feed_brake(msg, len(bad))
            await self._send_dsn("failure", msg, bad)  # stored before the failures are logged
            e.done.update(o.recipient for o in bad)
        if not e.pending:
            # Finished: removing the queue file is the record (a crash before it only repeats deliveries).
            await asyncio.to_thread(self.spool.finish, e.id)
            self._entries.pop(e.id, None)
            return
        e.attempts += 1
        when = now + retry_delay(self.cfg, e.attempts)
        why = {o.recipient: f"{o.enhanced} {o.text}"[:300] for o in later}
        records: list[dict[str, Any]] = [o.record() for o in unlogged + bad]
        records.append({"e": "deferred", "attempts": e.attempts, "next": when, "why": why})
        warn = self.cfg.relay.delay_warning
        if warn and not e.delay_sent and now - e.arrival >= warn and later:
            await self._send_dsn("delay", msg, later)
            e.delay_sent = True
            records.append({"e": "delay_dsn"})
        await asyncio.to_thread(self.spool.append_log, e.id, records)
        self._schedule(e, when)

    def _home_accounts(self) -> AccountStore | PgAccountStore:
        if self._homes_store is None:
            self._homes_store = open_accounts(self.cfg)  # one connection per thread that uses it
        return self._homes_store

    def _registry(self) -> Registry | None:
        try:
            return self.registry_getter()
        except Exception:
            log.exception("registry unavailable; member and outside deliveries wait")
            return None

    def _dest_sem(self, key: str) -> asyncio.Semaphore:
        sem = self._dest_sems.get(key)
        if sem is None:
            sem = self._dest_sems[key] = asyncio.Semaphore(self.cfg.relay.destination_concurrency)
        return sem

    async def _deliver_group(self, rt: Route, rcpts: list[str], msg: SpooledMessage) -> list[Outcome]:
        dest = rt.destination
        if dest.kind == "refuse":
            return failed(rcpts, 550, "5.7.1", f"relaying to {dest.domain} refused: {rt.reason}")
        if dest.kind == "hold":
            return deferred(rcpts, 450, "4.4.4", f"held: {rt.reason}")
        if dest.kind == "local":
            return await self._deliver_local(rcpts, msg)  # bounded by delivery_workers (above)
        async with self._dest_sem(dest.key):
            if self.before_connect is not None:
                await self.before_connect(dest)
            helo = self.cfg.box.hostname
            if dest.kind == "member":
                policy = smtpclient.TlsPolicy("required", self.cfg.relay.ca_file,
                                              client_cert=self.cfg.tls.cert, client_key=self.cfg.tls.key)
                return await self._send(rt.hops, msg.sender, rcpts, msg.data,
                                               policy=policy, helo=helo)
            if dest.kind == "home":
                # Another box of the fleet (docs/fleet.md "Home boxes"): TLS required, verified by the fleet's CA.
                policy = smtpclient.TlsPolicy("required", self.cfg.fleet.ca_file,
                                              client_cert=self.cfg.tls.cert, client_key=self.cfg.tls.key)
                return await self._send(rt.hops, msg.sender, rcpts, msg.data, policy=policy, helo=helo)
            if dest.kind == "relay":
                # A sponsored edge box: TLS as its route says (required unless configured
                # otherwise), verified by the route's pins or else against relay.ca_file.
                tls = self.cfg.relay.relay_routes[dest.domain].tls
                policy = smtpclient.TlsPolicy(tls, self.cfg.relay.ca_file if tls == "required" else "")
                return await self._send(rt.hops, msg.sender, rcpts, msg.data,
                                               policy=policy, helo=helo)
            if dest.kind == "upstream":
                up = self.cfg.relay.upstream
                assert up is not None
                try:
                    password = Path(up.password_file).read_text().strip()
                except OSError as exc:
                    return deferred(rcpts, 451, "4.3.5", f"upstream password file {up.password_file}: {exc.strerror}")
                policy = smtpclient.TlsPolicy("required", up.ca_file)
                return await self._send(rt.hops, msg.sender, rcpts, msg.data, policy=policy,
                                               helo=helo, auth=smtpclient.Auth(up.username, password))
            try:
                # Each hop carries the TLS it must have (DANE, MTA-STS or opportunistic): mx.py.
                hops = await outbound_hops(self.cfg, dest.domain, self.resolver, self.mx_port)
            except MxError as exc:
                return (failed if exc.permanent else deferred)(rcpts, 550 if exc.permanent else 451, exc.enhanced,
                                                               exc.text)
            return await self._send(hops, msg.sender, rcpts, msg.data,
                                           policy=smtpclient.TlsPolicy("opportunistic"), helo=helo)

    async def _send(self, *args: Any, **kwargs: Any) -> list[Outcome]:
        """smtpclient.send in the delivery threads."""
        call = functools.partial(smtpclient.send, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def _deliver_local(self, rcpts: list[str], msg: SpooledMessage) -> list[Outcome]:
        return await self._local.deliver(rcpts, msg)

    def _feed_brake(self, msg: SpooledMessage, count: int) -> None:
        """Bounced recipients of a customer's message count towards the abuse brake."""
        login = msg.meta.get("login")
        if not login or msg.meta.get("dsn"):
            return
        from appliance.ratelimit import runtime as limits_runtime

        try:
            limits_runtime.for_config(self.cfg).brake.record_rejected(login, count)
        except Exception:  # the brake must never stop delivery
            log.exception("abuse brake: could not record %d bounced recipient(s) of %s", count, login)

    async def _send_dsn(self, kind: dsn.Kind, msg: SpooledMessage, outcomes: list[Outcome]) -> None:
        # RFC 5321 4.5.5 / RFC 3464: never to the null sender, never about a DSN.
        if not msg.sender or msg.meta.get("dsn"):
            log.info("%s: no DSN (%s) for null sender; %d recipient(s) %s", msg.id, kind, len(outcomes), kind)
            return
        retry_until = msg.arrival + self.cfg.relay.max_lifetime if kind == "delay" else None
        if not msg.data:  # a held message was read without its data
            with contextlib.suppress(OSError, SpoolFormatError):
                msg = await asyncio.to_thread(self.spool.load, msg.id)
        data = dsn.build(kind, reporting_mta=self.cfg.box.hostname, postmaster=self.cfg.box.postmaster_address,
                         sender=msg.sender, queue_id=msg.id, arrival=msg.arrival, outcomes=outcomes,
                         original=msg.data, retry_until=retry_until)
        qid = await self.spool.store("", [msg.sender], data, {"dsn": kind, "about": msg.id})
        self.stats["dsn"] += 1
        log.info("%s: %s DSN queued as %s for <%s>", msg.id, kind, qid, msg.sender)
