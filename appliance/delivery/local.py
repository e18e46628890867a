"""Local delivery with group commit: parallel delivery threads whose concurrent fsyncs share journal commits.

Up to THREADS delivery threads (the manager passes ``relay.delivery_workers``;
started as the load needs them) each take every delivery request waiting (a
request goes to exactly one thread), write each recipient's file into the
Maildir's tmp/, fsync those files concurrently, rename them into new/, fsync
each distinct new/ directory once, and only then report the recipients as
delivered. While one thread waits for its fsyncs the others write theirs, so
the kernel folds the fsyncs of several threads into one journal commit, as it
does for Postfix's parallel virtual(8) processes. A thread never waits for a
batch to grow: with one thread it waited out a 30 ms window for deliveries that
could not arrive (py-spy: 57 % of its time, docs/benchmarks.md "Profile, third
session"). A lone file or directory is fsynced in the thread itself.
``deliver_queued`` also reads the message from the spool and removes it once
delivered, so a message for local mailboxes costs the event loop one thread
hand-off (docs/spool.md "Delivery").

Quota (RFC 9208 STORAGE/MESSAGE, appliance.mailstore.quota): a recipient whose
mailbox cannot take the message gets a temporary failure (452 4.2.2): the
message stays queued and is retried, and after the queue lifetime the sender
gets a DSN; nothing is dropped. The delivery that takes a mailbox over 90 %
also delivers a warning into it, once per crossing: the relay is where usage
grows without the user doing anything, and it is the one writer that sees
every delivery (APPEND and COPY are the user's own doing and are answered
with the quota in the IMAP response).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import queue
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.accounts import AccountStore
from appliance.delivery.maildir import ensure_maildir, unique_name
from appliance.delivery.outcome import Outcome, deferred, failed
from appliance.delivery.usage import UsageCache
from appliance.fsutil import fsync_dir
from appliance.mailstore import account_maildir
from appliance.mailstore import quota as mquota

if TYPE_CHECKING:
    from appliance.accounts_pg import PgAccountStore
    from appliance.spool.spool import Spool
from appliance.mailstore.maildir import crlf_size
from appliance.mailstore.names import dir_name
from appliance.policy.dmarc_verify import JUNK, JUNK_HEADER
from appliance.spool import faults
from appliance.spool.format import SpooledMessage, SpoolFormatError

log = logging.getLogger("appliance.delivery.local")
# dmarc_verify's request (relay.outsiders = "verify": p=quarantine failures), set only by the relay.
_JUNK_FIELD = re.compile(rb"(?im)^" + re.escape(JUNK_HEADER.encode()) + rb"[ \t]*:")
FSYNC_THREADS = 8
# Message bytes the delivery threads hold read from the spool at once (each also makes an LF copy
# and a copy per recipient): the threads and their batches are many, big messages wait their turn.
LOAD_BUDGET = 32 * 1024 * 1024
BATCH_MAX = 16  # deliveries in one batch: more wait for the next free thread (their fsyncs overlap)


@dataclass
class _Job:
    rcpts: list[str]
    msg: SpooledMessage | None  # None: read it from the spool first (``queued``)
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Outcome]]
    outcomes: list[Outcome] = field(default_factory=list)
    # A queued message delivered whole by this thread: read from SPOOL, removed from it once every
    # recipient is delivered (``deliver_queued``).
    spool: Spool | None = None
    qid: str = ""
    error: Exception | None = None  # the queued message could not be read
    finished: bool = False


class _Budget:
    """Bytes shared by the delivery threads; ``take`` waits while others hold too many. A message
    bigger than the whole budget goes when nothing else is held. A thread holds one take at a time."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._cond = threading.Condition()

    def take(self, size: int) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self.held == 0 or self.held + size <= self.limit)
            self.held += size
        return size

    def give(self, size: int) -> None:
        if size:
            with self._cond:
                self.held -= size
                self._cond.notify_all()


@dataclass
class QueuedDelivery:
    """What ``deliver_queued`` did: the message as read, an outcome per recipient, and whether it
    is finished (every recipient delivered, the message and its log removed from the spool)."""

    msg: SpooledMessage | None
    outcomes: list[Outcome]
    finished: bool


@dataclass
class _File:
    job: _Job
    rcpt: str
    owner: str
    maildir: Path
    name: str
    fd: int
    quota_root: Path  # the account's Maildir (maildir may be its Junk folder)
    vsize: int


class LocalDelivery:
    def __init__(self, mail_dir: str | Path, accounts_db: str | Path | Callable[[], AccountStore | PgAccountStore],
                 postmaster: str = "", limit_classes: Mapping[str, Any] | None = None,
                 usage: UsageCache | None = None, threads: int = 1) -> None:
        """ACCOUNTS_DB: the SQLite file, or what opens the store of `state.backend` (``open_accounts``).
        USAGE: the mailbox usage this delivery counts into (the relay shares it with its RCPT check).
        THREADS: at most this many delivery threads (each with its own accounts connection)."""
        self.mail_dir = Path(mail_dir)
        self.postmaster = postmaster
        self.limit_classes = limit_classes  # config limits.classes, for each account's quota; None: no quota
        self._open_accounts = accounts_db if callable(accounts_db) else partial(AccountStore, Path(accounts_db))
        self._q: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        if threads < 1:
            raise ValueError(f"relay.delivery_workers: {threads}: at least one delivery thread is needed")
        self.max_threads = threads
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a request
        self._lock = threading.Lock()  # _threads, _idle, stats
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._usage = usage if usage is not None else UsageCache()
        # Quota: bytes and messages that deliveries in flight (any thread) have reserved per account
        # Maildir, so two threads cannot both fit a message into the last room of one mailbox.
        self._quota_lock = threading.Lock()
        self._inflight: dict[Path, list[int]] = {}
        self._budget = _Budget(LOAD_BUDGET)
        self.stats = {"delivered": 0, "batches": 0, "file_fsyncs": 0, "dir_fsyncs": 0, "over_quota": 0,
                      "quota_warnings": 0}

    def _count(self, **add: int) -> None:
        with self._lock:  # several threads count: `+=` on a dict item is not atomic
            for k, v in add.items():
                self.stats[k] += v

    async def deliver(self, rcpts: list[str], msg: SpooledMessage) -> list[Outcome]:
        return await self._submit(_Job(rcpts, msg, *self._future()))

    async def deliver_queued(self, spool: Spool, qid: str, rcpts: list[str]) -> QueuedDelivery:
        """Deliver queued message QID to RCPTS (all its unfinished recipients) in one hand-off to the
        delivery thread: it reads the message, delivers it, and once every recipient is delivered
        removes it from the spool (the message file, then its log), as the manager would after the
        same ``after_deliver`` point. Raises what ``Spool.load`` raises (gone, corrupt)."""
        job = _Job(rcpts, None, *self._future(), spool=spool, qid=qid)
        outcomes = await self._submit(job)
        if job.error is not None:
            raise job.error
        return QueuedDelivery(job.msg, outcomes, job.finished)

    @staticmethod
    def _future() -> tuple[asyncio.AbstractEventLoop, asyncio.Future[list[Outcome]]]:
        loop = asyncio.get_running_loop()
        return loop, loop.create_future()

    async def _submit(self, job: _Job) -> list[Outcome]:
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="local-fsync")
            self._q.put(job)
            # Another thread when every one is busy: requests then wait while the disk has room for
            # more concurrent fsyncs. Started on demand, so an idle box keeps one.
            if len(self._threads) < self.max_threads and self._q.qsize() > self._idle:
                t = threading.Thread(target=self._run, name=f"local-delivery-{len(self._threads)}", daemon=True)
                self._threads.append(t)
                t.start()
        return await job.future

    def close(self) -> None:
        with self._lock:
            threads, self._threads = [t for t in self._threads if t.is_alive()], []
        for _ in threads:
            self._q.put(None)  # one stop request per thread
        for t in threads:
            t.join(30)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _run(self) -> None:
        store = self._open_accounts()
        try:
            while True:
                with self._lock:
                    self._idle += 1
                try:
                    first = self._q.get()
                finally:
                    with self._lock:
                        self._idle -= 1
                if first is None:
                    return
                batch = [first]
                stop = False
                # Every request already waiting joins the batch (they share its fsyncs); nothing more is
                # waited for: the other threads' fsyncs share the journal commits meanwhile.
                while len(batch) < BATCH_MAX:
                    try:
                        nxt = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                try:
                    self._commit(store, batch)
                except Exception as exc:  # never leave a delivery waiting forever
                    log.exception("local delivery batch failed")
                    for job in batch:
                        job.outcomes = deferred(job.rcpts, 451, "4.3.0", f"local delivery failed: {exc}")
                self._resolve(batch)
                if stop:
                    return
        finally:
            store.close()

    @staticmethod
    def _resolve(batch: list[_Job]) -> None:
        """Hand the outcomes back: one wake-up of each event loop for the whole batch."""
        loops: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        for job in batch:
            loops.setdefault(job.loop, []).append(job)

        def done(jobs: list[_Job]) -> None:
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(job.outcomes)

        for loop, jobs in loops.items():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(done, jobs)

    def _commit(self, store: AccountStore | PgAccountStore, batch: list[_Job]) -> None:
        reserved: list[tuple[Path, int]] = []  # quota room this batch took in _inflight
        delivered: list[_File] = []
        try:
            self._commit_files(store, batch, reserved, delivered)
        finally:
            self._settle(reserved, delivered)

    def _write_files(self, store: AccountStore | PgAccountStore, job: _Job, files: list[_File],
                     maildirs: dict[str, Path], ready: set[Path], reserved: list[tuple[Path, int]],
                     warn: dict[Path, tuple[str, mquota.QuotaLimits, tuple[int, int]]]) -> None:
        """Write JOB's message into each recipient's Maildir tmp/ (not yet fsynced: FILES)."""
        assert job.msg is not None
        # RFC 5321 4.4: the final delivery MTA adds Return-Path. Maildir files use LF line ends.
        body = job.msg.data.replace(b"\r\n", b"\n")
        junk = to_junk(job.msg.data)
        for r in job.rcpts:
            owner = store.owner_of(r)
            if owner is None and r.split("@", 1)[0] == "postmaster" and self.postmaster:
                # RFC 5321 4.5.1: postmaster must be accepted (the relay does) and delivered.
                owner = store.owner_of(self.postmaster)
            if owner is None:
                job.outcomes += failed([r], 550, "5.1.1", f"<{r}>: no such user here")
                continue
            md = maildirs.get(owner) or maildirs.setdefault(owner, account_maildir(self.mail_dir, owner))
            content = f"Return-Path: <{job.msg.sender}>\nDelivered-To: {r}\n".encode() + body
            vsize = crlf_size(content)
            if self.limit_classes is not None:
                refusal = self._over_quota(store, owner, md, vsize, reserved, warn)
                if refusal is not None:
                    self._count(over_quota=1)
                    job.outcomes += deferred([r], 452, "4.2.2", f"<{r}>: {refusal}")
                    continue
            name = unique_name(len(content), vsize)
            # Quota counts the whole account (md); the file goes into its Junk folder when asked.
            target = md / dir_name(JUNK) if junk else md
            try:
                if target not in ready:
                    ensure_maildir(target)
                    ready.add(target)
                fd = os.open(target / "tmp" / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as exc:
                job.outcomes += deferred([r], 451, "4.3.0", f"local delivery failed: {exc.strerror or exc}")
                continue
            f = _File(job, r, owner, target, name, fd, md, vsize)
            try:
                view = memoryview(content)
                while view:
                    view = view[os.write(fd, view):]
            except OSError as exc:
                self._drop(f, exc)
                continue
            files.append(f)

    def _settle(self, reserved: list[tuple[Path, int]], delivered: list[_File]) -> None:
        """Count what was delivered into the usage and give back the batch's reservations, in one step
        for the other threads' quota checks (a message is never counted in neither, at worst in both)."""
        with self._quota_lock:
            for f in delivered:
                self._usage.delivered(f.quota_root, f.vsize)
            for md, vsize in reserved:
                extra = self._inflight[md]
                extra[0] -= vsize
                extra[1] -= 1
                if extra[1] <= 0:
                    del self._inflight[md]

    def _commit_files(self, store: AccountStore | PgAccountStore, batch: list[_Job],
                      reserved: list[tuple[Path, int]], delivered: list[_File]) -> None:
        assert self._pool is not None
        self._count(batches=1)
        files: list[_File] = []
        warn: dict[Path, tuple[str, mquota.QuotaLimits, tuple[int, int]]] = {}
        # Looked up and made once per batch, not per message (a stat and three mkdirs each: py-spy).
        maildirs: dict[str, Path] = {}
        ready: set[Path] = set()
        for job in batch:
            loaded = 0  # bytes of the budget this job's data holds (read here from the spool)
            if job.msg is None:
                assert job.spool is not None
                try:
                    loaded = self._budget.take(job.spool.path(job.qid).stat().st_size)
                    job.msg = job.spool.load(job.qid)
                except (OSError, SpoolFormatError) as exc:
                    self._budget.give(loaded)
                    job.error = exc
                    continue
            try:
                self._write_files(store, job, files, maildirs, ready, reserved, warn)
            finally:
                if loaded:
                    # Written (or refused): the data goes; the manager reads it again if it needs it.
                    job.msg = dataclasses.replace(job.msg, data=b"")
                    self._budget.give(loaded)
        errors = self._each(_fsync, [f.fd for f in files])
        self._count(file_fsyncs=sum(1 for e in errors if e is None))
        renamed: list[_File] = []
        for f, err in zip(files, errors, strict=True):
            if err is not None:
                self._drop(f, err)
                continue
            os.close(f.fd)
            try:
                os.rename(f.maildir / "tmp" / f.name, f.maildir / "new" / f.name)
            except OSError as exc:
                f.job.outcomes += deferred([f.rcpt], 451, "4.3.0", f"local delivery failed: {exc.strerror or exc}")
                with contextlib.suppress(OSError):
                    os.unlink(f.maildir / "tmp" / f.name)
                continue
            renamed.append(f)
        dirs = sorted({f.maildir / "new" for f in renamed})
        dir_errors = dict(zip(dirs, self._each(_fsync_dir, dirs), strict=True))
        self._count(dir_fsyncs=len(dirs))
        for f in renamed:
            err = dir_errors[f.maildir / "new"]
            if err is not None:
                # The rename may not survive a crash: report it as not delivered (a retry may duplicate).
                f.job.outcomes += deferred([f.rcpt], 451, "4.3.0", f"local delivery failed: {err.strerror or err}")
                continue
            self._count(delivered=1)
            delivered.append(f)  # counted into the usage by _settle
            f.job.outcomes.append(Outcome(f.rcpt, "delivered", 250, "2.0.0", f"delivered to maildir of {f.owner}"))
        for job in batch:
            if job.spool is None or job.error is not None:
                continue
            faults.point("after_deliver")
            if len(job.outcomes) == len(job.rcpts) and all(o.status == "delivered" for o in job.outcomes):
                # Finished: removing the queue file is the record (a crash before it only repeats deliveries).
                try:
                    job.spool.finish(job.qid)
                except OSError as exc:  # the manager tries again
                    log.warning("%s: delivered, but not removed from the spool: %s", job.qid, exc)
                    continue
                job.finished = True
        for md, (owner, limits, used) in warn.items():
            try:
                self._warn(md, owner, limits, used)
            except OSError as exc:
                (md / mquota.WARNED_FILE).unlink(missing_ok=True)  # try again at the next delivery
                log.warning("quota warning for %s not delivered: %s", owner, exc)

    def _each(self, fn: Callable[[Any], OSError | None], items: list[Any]) -> list[OSError | None]:
        """FN on every item, concurrently (concurrent fsyncs share journal commits); one item here, in
        this thread: a hand-off to the pool and back costs more than it saves."""
        if len(items) <= 1:
            return [fn(x) for x in items]
        assert self._pool is not None
        return list(self._pool.map(fn, items))

    def _over_quota(self, store: AccountStore | PgAccountStore, owner: str, md: Path, vsize: int,
                    reserved: list[tuple[Path, int]],
                    warn: dict[Path, tuple[str, mquota.QuotaLimits, tuple[int, int]]]) -> str | None:
        """Why OWNER's mailbox cannot take VSIZE more octets now, or None (then reserved in _inflight
        until the batch settles, and listed in RESERVED)."""
        account = store.get(owner)
        assert self.limit_classes is not None
        if account is None:
            return None
        limits = mquota.limits_for(account, self.limit_classes)
        if limits.unlimited:
            return None
        # Outside the lock: it may read the disk once (appliance/delivery/usage.py), not per message.
        self._usage.usage(md)
        with self._quota_lock:
            base = self._usage.usage(md)  # cached now: usage plus what is reserved, as one figure
            extra = self._inflight.setdefault(md, [0, 0])
            used = (base.bytes + extra[0], base.messages + extra[1])
            err = mquota.quota_error(used, limits, vsize, 1)
            if err is not None:
                if extra[1] == 0:
                    del self._inflight[md]
                return err.text
            extra[0] += vsize
            extra[1] += 1
            reserved.append((md, vsize))
        after = (used[0] + vsize, used[1] + 1)
        if md not in warn and mquota.warning_due(md, limits, after):
            warn[md] = (owner, limits, after)
        return None

    def _warn(self, md: Path, owner: str, limits: mquota.QuotaLimits, used: tuple[int, int]) -> None:
        """Deliver the 90 % warning into OWNER's INBOX (tmp/, fsync, new/, fsync)."""
        data = mquota.warning_message(owner, used, limits, self.postmaster)
        name = unique_name(len(data), crlf_size(data))
        fd = os.open(md / "tmp" / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(md / "tmp" / name, md / "new" / name)
        fsync_dir(md / "new")
        self._usage.delivered(md, crlf_size(data))
        self._count(quota_warnings=1)
        log.info("quota warning delivered to %s (%s bytes, %s messages)", owner, *used)

    @staticmethod
    def _drop(f: _File, exc: OSError) -> None:
        with contextlib.suppress(OSError):
            os.close(f.fd)
        with contextlib.suppress(OSError):
            os.unlink(f.maildir / "tmp" / f.name)
        f.job.outcomes += deferred([f.rcpt], 451, "4.3.0", f"local delivery failed: {exc.strerror or exc}")


def to_junk(data: bytes) -> bool:
    """Did the relay's DMARC decision ask for the Junk folder (an X-Appliance-Junk field in the header)?"""
    end = data.find(b"\r\n\r\n")
    head = data[: end + 2] if end >= 0 else data
    return _JUNK_FIELD.search(head) is not None


def _fsync(fd: int) -> OSError | None:
    try:
        os.fsync(fd)
    except OSError as exc:
        return exc
    return None


def _fsync_dir(d: Path) -> OSError | None:
    try:
        fsync_dir(d)
    except OSError as exc:
        return exc
    return None
