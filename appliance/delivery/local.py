"""Local delivery with group commit: concurrent Maildir deliveries share fsyncs.

One thread takes every delivery request waiting, writes each recipient's file
into the Maildir's tmp/, fsyncs all those files concurrently (one journal
commit instead of one per file), renames them into new/, fsyncs each distinct
new/ directory once, and only then reports the recipients as delivered. The
per-message cost that competes with accepting mail drops from two serial
fsyncs and a thread hop to a share of one batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

from appliance.accounts import AccountStore
from appliance.delivery.maildir import ensure_maildir, unique_name
from appliance.delivery.outcome import Outcome, deferred, failed
from appliance.mailstore import maildir_path
from appliance.spool.format import SpooledMessage
from appliance.spool.spool import fsync_dir

log = logging.getLogger("appliance.delivery.local")
FSYNC_THREADS = 8


@dataclass
class _Job:
    rcpts: list[str]
    msg: SpooledMessage
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Outcome]]
    outcomes: list[Outcome] = field(default_factory=list)


@dataclass
class _File:
    job: _Job
    rcpt: str
    owner: str
    maildir: Path
    name: str
    fd: int


class LocalDelivery:
    def __init__(self, mail_dir: str | Path, accounts_db: str | Path, postmaster: str = "") -> None:
        self.mail_dir = Path(mail_dir)
        self.postmaster = postmaster
        self.accounts_db = Path(accounts_db)
        self._q: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.stats = {"delivered": 0, "batches": 0, "file_fsyncs": 0, "dir_fsyncs": 0}

    async def deliver(self, rcpts: list[str], msg: SpooledMessage) -> list[Outcome]:
        if self._thread is None or not self._thread.is_alive():
            self._pool = concurrent.futures.ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="local-fsync")
            self._thread = threading.Thread(target=self._run, name="local-delivery", daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        job = _Job(rcpts, msg, loop, loop.create_future())
        self._q.put(job)
        return await job.future

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._q.put(None)
            self._thread.join(30)
        self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _run(self) -> None:
        store = AccountStore(self.accounts_db)
        try:
            while True:
                first = self._q.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while True:
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
                for job in batch:
                    self._resolve(job)
                if stop:
                    return
        finally:
            store.close()

    @staticmethod
    def _resolve(job: _Job) -> None:
        def done() -> None:
            if not job.future.done():
                job.future.set_result(job.outcomes)

        with contextlib.suppress(RuntimeError):
            job.loop.call_soon_threadsafe(done)

    def _commit(self, store: AccountStore, batch: list[_Job]) -> None:
        assert self._pool is not None
        self.stats["batches"] += 1
        files: list[_File] = []
        for job in batch:
            # RFC 5321 4.4: the final delivery MTA adds Return-Path. Maildir files use LF line ends.
            body = job.msg.data.replace(b"\r\n", b"\n")
            for r in job.rcpts:
                owner = store.owner_of(r)
                if owner is None and r.split("@", 1)[0] == "postmaster" and self.postmaster:
                    # RFC 5321 4.5.1: postmaster must be accepted (the relay does) and delivered.
                    owner = store.owner_of(self.postmaster)
                if owner is None:
                    job.outcomes += failed([r], 550, "5.1.1", f"<{r}>: no such user here")
                    continue
                md = maildir_path(self.mail_dir, owner)
                content = f"Return-Path: <{job.msg.sender}>\nDelivered-To: {r}\n".encode() + body
                name = unique_name(len(content))
                try:
                    ensure_maildir(md)
                    fd = os.open(md / "tmp" / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except OSError as exc:
                    job.outcomes += deferred([r], 451, "4.3.0", f"local delivery failed: {exc.strerror or exc}")
                    continue
                f = _File(job, r, owner, md, name, fd)
                try:
                    view = memoryview(content)
                    while view:
                        view = view[os.write(fd, view):]
                except OSError as exc:
                    self._drop(f, exc)
                    continue
                files.append(f)
        errors = list(self._pool.map(_fsync, [f.fd for f in files]))
        self.stats["file_fsyncs"] += sum(1 for e in errors if e is None)
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
        dir_errors = dict(zip(dirs, self._pool.map(_fsync_dir, dirs), strict=True))
        self.stats["dir_fsyncs"] += len(dirs)
        for f in renamed:
            err = dir_errors[f.maildir / "new"]
            if err is not None:
                # The rename may not survive a crash: report it as not delivered (a retry may duplicate).
                f.job.outcomes += deferred([f.rcpt], 451, "4.3.0", f"local delivery failed: {err.strerror or err}")
                continue
            self.stats["delivered"] += 1
            f.job.outcomes.append(Outcome(f.rcpt, "delivered", 250, "2.0.0", f"delivered to maildir of {f.owner}"))

    @staticmethod
    def _drop(f: _File, exc: OSError) -> None:
        with contextlib.suppress(OSError):
            os.close(f.fd)
        with contextlib.suppress(OSError):
            os.unlink(f.maildir / "tmp" / f.name)
        f.job.outcomes += deferred([f.rcpt], 451, "4.3.0", f"local delivery failed: {exc.strerror or exc}")


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
