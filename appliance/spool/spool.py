"""The durable queue.

Messages received over SMTP are streamed in through ``begin()`` (an ``Incoming``,
appliance/spool/incoming.py: one fsync per message, into a pre-created file).
``store()`` returns a queue id only once the message is on disk: written to
``tmp/``, fsynced, renamed into ``queue/``, and ``queue/`` fsynced. Concurrent
``store()`` calls are committed together by one thread (group commit): it takes
every request waiting, writes and fsyncs each file, renames them all, fsyncs the
queue directory once, and only then resolves the callers' futures. Under load N
sessions share one directory fsync and the kernel's journal commits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import itertools
import logging
import os
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.fsutil import fsync_dir
from appliance.spool import faults
from appliance.spool.format import (
    MAGIC,
    MAGIC2,
    SpooledMessage,
    SpoolFormatError,
    decode,
    decode_log,
    encode,
    encode_log,
    read_head,
)
from appliance.spool.incoming import POOL_START, Incoming, Precreated

log = logging.getLogger("appliance.spool")

DEFAULT_FREE_RESERVE = 0  # bytes kept free on the spool's file system beyond the message itself
QUEUE_ID = re.compile(r"^[0-9A-F]{16,40}$")
FSYNC_THREADS = 16
IO_THREADS = 32  # streamed writes and commits of incoming messages: concurrent fsyncs share journal commits
# (8 made 100 sessions queue for them: p50 DATA->250 97-113 ms with 32 vs 159-181 ms with 8, bench/relay)
SUBDIRS = ("tmp", "incoming", "queue", "corrupt", "log", "control")


class SpoolError(Exception):
    """The message could not be stored (the relay answers 451 4.3.0)."""


class SpoolFull(SpoolError):
    """No room on the spool's file system (the relay answers 452 4.3.1)."""


@dataclass
class RecoveryReport:
    queued: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    dropped_tmp: int = 0
    dropped_incoming: int = 0  # never-acknowledged files in incoming/ (pre-created ones included)
    dropped_logs: int = 0
    # The verified envelopes (no data) of every queued message, so delivery need not read them again.
    heads: dict[str, SpooledMessage] = field(default_factory=dict)


@dataclass
class _Request:
    msg: SpooledMessage
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[str]
    tmp: Path | None = None
    error: Exception | None = None


_id_counter = itertools.count(secrets.randbelow(1 << 24))


def new_queue_id() -> str:
    # Time-ordered (so `queue list` sorts by arrival); the counter (random start) keeps ids unique
    # within the process without a random-number system call per message.
    return f"{time.time_ns():016X}{next(_id_counter) & 0xFFFFFF:06X}"


class Spool:
    def __init__(self, spool_dir: Path, *, max_bytes_free_reserve: int = DEFAULT_FREE_RESERVE) -> None:
        self.dir = Path(spool_dir)
        self.reserve = max_bytes_free_reserve
        for sub in SUBDIRS:
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.tmp_dir = self.dir / "tmp"
        self.incoming_dir = self.dir / "incoming"
        self.queue_dir = self.dir / "queue"
        self.corrupt_dir = self.dir / "corrupt"
        self.log_dir = self.dir / "log"
        self.control_dir = self.dir / "control"
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._dirsync_thread: threading.Thread | None = None
        self._dirsync_q: queue.SimpleQueue[list[_Request] | None] = queue.SimpleQueue()
        self._thread_lock = threading.Lock()
        self._fsync_pool = concurrent.futures.ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="spool-fsync")
        self.io_pool = concurrent.futures.ThreadPoolExecutor(IO_THREADS, thread_name_prefix="spool-io")
        self.precreated = Precreated(self.incoming_dir, self.io_pool)
        self._listeners: list[Callable[[SpooledMessage], None]] = []
        self._lock_fd: int | None = None
        self.recovered = False
        # Counters for tests and metrics: how many fsyncs the commits cost.
        self.stats = {"stored": 0, "batches": 0, "file_fsyncs": 0, "dir_fsyncs": 0, "largest_batch": 0}

    # --- storing ---------------------------------------------------------------------------

    def add_listener(self, callback: Callable[[SpooledMessage], None]) -> None:
        """Called in the event loop with each newly stored message (without its data)."""
        self._listeners.append(callback)

    def begin(self, sender: str, recipients: list[str], meta: dict[str, Any]) -> Incoming:
        """Start a message whose body will be streamed in; raises SpoolError for no recipients."""
        if not recipients:
            raise SpoolError("no recipients")
        name, fresh = self.precreated.take()
        head = SpooledMessage(new_queue_id(), sender, tuple(recipients), time.time(), dict(meta))
        return Incoming(self, head, name, fresh)

    def committed(self, head: SpooledMessage) -> None:
        """An Incoming is durable (called in the event loop): count it and tell the listeners."""
        self.stats["stored"] += 1
        self.stats["file_fsyncs"] += 1
        self._notify(head)

    def check_room(self, size: int) -> None:
        """Raise SpoolFull when writing SIZE more bytes would eat into the reserve (blocking: a statvfs)."""
        free = self._free_bytes()
        if free - size < self.reserve:
            raise SpoolFull(f"spool file system has {free} bytes free, reserve is {self.reserve}")

    def os_error(self, exc: OSError, what: str) -> SpoolError:
        return self._os_error(exc, what)

    async def store(self, sender: str, recipients: list[str], data: bytes, meta: dict[str, Any]) -> str:
        """Store durably and return the queue id; raises SpoolFull or SpoolError."""
        if not recipients:
            raise SpoolError("no recipients")
        loop = asyncio.get_running_loop()
        msg = SpooledMessage(new_queue_id(), sender, tuple(recipients), time.time(), dict(meta), bytes(data))
        req = _Request(msg, loop, loop.create_future())
        self._ensure_thread()
        self._requests.put(req)
        return await req.future

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._thread_lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._commit_loop, name="spool-commit", daemon=True)
                    self._dirsync_thread = threading.Thread(target=self._dirsync_loop, name="spool-dirsync",
                                                            daemon=True)
                    self._dirsync_thread.start()
                    self._thread.start()

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._requests.put(None)
            self._thread.join(timeout=10)
        if self._dirsync_thread is not None:
            self._dirsync_thread.join(timeout=10)
        self._thread = None
        self._dirsync_thread = None
        self._fsync_pool.shutdown(wait=True)
        self._fsync_pool = concurrent.futures.ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="spool-fsync")
        self.io_pool.shutdown(wait=True)
        self.io_pool = concurrent.futures.ThreadPoolExecutor(IO_THREADS, thread_name_prefix="spool-io")
        self.precreated = Precreated(self.incoming_dir, self.io_pool)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _commit_loop(self) -> None:
        """Stage 1: write, fsync and rename each batch; stage 2 (_dirsync_loop) makes the renames durable.

        The two stages overlap: while one batch waits for its directory fsync, the next
        batch's files are written and fsynced.
        """
        try:
            while True:
                first = self._requests.get()
                if first is None:
                    return
                batch = [first]
                while True:
                    try:
                        nxt = self._requests.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        self._requests.put(None)  # finish this batch, then stop
                        break
                    batch.append(nxt)
                renamed: list[_Request] = []
                try:
                    renamed = self._commit(batch)
                except Exception as exc:  # never leave a caller waiting forever
                    log.exception("spool commit failed")
                    for r in batch:
                        if r.error is None:
                            r.error = SpoolError(f"spool commit failed: {exc}")
                    renamed = []
                pending = {id(r) for r in renamed}
                for r in batch:
                    if id(r) not in pending:
                        self._resolve(r)  # refused: answer now, without waiting for the directory fsync
                if renamed:
                    self._dirsync_q.put(renamed)
        finally:
            self._dirsync_q.put(None)

    def _dirsync_loop(self) -> None:
        while True:
            first = self._dirsync_q.get()
            if first is None:
                return
            waiting = list(first)
            stop = False
            while True:
                try:
                    nxt = self._dirsync_q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                waiting += nxt
            try:
                fsync_dir(self.queue_dir)  # one fsync makes every rename before it durable
                self.stats["dir_fsyncs"] += 1
                self.stats["stored"] += len(waiting)
                faults.point("after_dirsync")
            except OSError as exc:
                # The renames may not be durable: refuse them all (temporary) rather than risk a lost 250.
                for r in waiting:
                    r.error = self._os_error(exc, "directory fsync")
                    with contextlib.suppress(OSError):
                        os.unlink(self.queue_dir / r.msg.id)
            for r in waiting:
                self._resolve(r)
            if stop:
                return

    def _notify(self, msg: SpooledMessage) -> None:
        head = SpooledMessage(msg.id, msg.sender, msg.recipients, msg.arrival, msg.meta)
        for cb in self._listeners:
            try:
                cb(head)
            except Exception:  # a listener's bug must not turn a stored message into an error reply
                log.exception("spool listener failed for %s", msg.id)

    def _resolve(self, r: _Request) -> None:
        def done() -> None:
            if r.error is None:
                # Stored: delivery must learn of it even if the caller has gone away meanwhile.
                self._notify(r.msg)
            if r.future.done():
                return
            if r.error is not None:
                r.future.set_exception(r.error)
            else:
                r.future.set_result(r.msg.id)

        with contextlib.suppress(RuntimeError):  # loop closed: the caller is gone
            r.loop.call_soon_threadsafe(done)

    def _free_bytes(self) -> int:
        st = os.statvfs(self.queue_dir)
        return st.f_bavail * st.f_frsize

    def _commit(self, batch: list[_Request]) -> list[_Request]:
        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        free = self._free_bytes()
        opened: list[tuple[_Request, int]] = []
        for r in batch:
            raw = encode(r.msg)
            if free - len(raw) < self.reserve:
                r.error = SpoolFull(f"spool file system has {free} bytes free, reserve is {self.reserve}")
                continue
            tmp = self.tmp_dir / r.msg.id
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as exc:
                r.error = self._os_error(exc, "create")
                continue
            r.tmp = tmp
            try:
                view = memoryview(raw)
                while view:
                    view = view[os.write(fd, view):]
                faults.point("after_write")
            except OSError as exc:
                r.error = self._os_error(exc, "write")
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                continue
            free -= len(raw)
            opened.append((r, fd))
        # fsync the batch's files concurrently: the file system folds concurrent fsyncs into one
        # journal commit, where one after another each costs a full commit (about 5 ms here).
        results = list(self._fsync_pool.map(self._fsync_one, [fd for _, fd in opened]))
        self.stats["file_fsyncs"] += sum(1 for err in results if err is None)
        written: list[_Request] = []
        for (r, fd), err in zip(opened, results, strict=True):
            os.close(fd)
            if err is not None:
                r.error = self._os_error(err, "fsync")
                with contextlib.suppress(OSError):
                    os.unlink(r.tmp)  # type: ignore[arg-type]
                continue
            written.append(r)
        renamed: list[_Request] = []
        for r in written:
            assert r.tmp is not None
            try:
                os.rename(r.tmp, self.queue_dir / r.msg.id)
                renamed.append(r)
                faults.point("after_rename")
            except OSError as exc:
                r.error = self._os_error(exc, "rename")
                with contextlib.suppress(OSError):
                    os.unlink(r.tmp)
        return renamed

    def _fsync_one(self, fd: int) -> OSError | None:
        try:
            os.fsync(fd)
        except OSError as exc:
            return exc
        faults.point("after_fsync")
        return None

    @staticmethod
    def _os_error(exc: OSError, what: str) -> SpoolError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return SpoolFull(f"spool {what}: {exc.strerror}")
        return SpoolError(f"spool {what}: {exc.strerror or exc}")

    # --- start-up recovery -----------------------------------------------------------------

    def recover(self) -> RecoveryReport:
        """``prepare()`` then ``verify_queue()``: the whole recovery, before anything is stored."""
        rep = self.prepare()
        self.verify_queue(rep)
        return rep

    def prepare(self, rep: RecoveryReport | None = None) -> RecoveryReport:
        """The part of recovery that must finish before the relay listens (blocking; quick).

        Drops unacknowledged files from tmp/ and incoming/, moves committed files from
        incoming/ into queue/, and pre-creates the files new messages are written into.
        """
        rep = rep or RecoveryReport()
        for p in self.tmp_dir.iterdir():
            # Nothing in tmp/ was ever acknowledged: store() answers only after the rename.
            with contextlib.suppress(OSError):
                p.unlink()
                rep.dropped_tmp += 1
        moved = False
        for p in sorted(self.incoming_dir.iterdir()):
            moved |= self._recover_incoming(p, rep)
        if moved:
            fsync_dir(self.queue_dir)
            fsync_dir(self.corrupt_dir)
        fsync_dir(self.incoming_dir)
        self.precreated.fill(POOL_START)  # the background refill takes it to POOL_HIGH
        return rep

    def _recover_incoming(self, p: Path, rep: RecoveryReport) -> bool:
        """One file left in incoming/ by a crash; True if it was moved."""
        try:
            with open(p, "rb") as f:
                magic = f.read(len(MAGIC2))
        except OSError:
            return False
        if magic not in (MAGIC, MAGIC2):
            # Its first line is written just before the one fsync: without it the message was never
            # acknowledged (an empty pre-created file, or a crash while the body was arriving).
            with contextlib.suppress(OSError):
                p.unlink()
                rep.dropped_incoming += 1
            return False
        try:
            head = read_head(p)
        except (SpoolFormatError, OSError) as exc:
            # A first line but no valid checksum: torn in the fsync itself, or damaged later.
            # It may have been acknowledged, so it is kept for the operator.
            self._quarantine_file(p, rep, exc)
            return True
        os.rename(p, self.queue_dir / head.id)
        log.info("recovered %s from incoming/", head.id)
        return True

    def _quarantine_file(self, p: Path, rep: RecoveryReport, exc: Exception) -> None:
        log.error("quarantining corrupt queue file %s: %s", p.name, exc)
        dest = self.corrupt_dir / p.name
        if dest.exists():
            dest = self.corrupt_dir / f"{p.name}.{secrets.token_hex(4)}"
        os.rename(p, dest)
        rep.corrupt.append(p.name)

    def verify_queue(self, rep: RecoveryReport | None = None) -> RecoveryReport:
        """Read and verify every queued file once (blocking; may run while the relay already listens)."""
        rep = rep or RecoveryReport()
        moved = False
        for p in sorted(self.queue_dir.iterdir()):
            try:
                head = read_head(p)
            except FileNotFoundError:
                continue  # delivered meanwhile
            except (SpoolFormatError, OSError) as exc:
                self._quarantine_file(p, rep, exc)
                moved = True
                continue
            rep.queued.append(p.name)
            rep.heads[p.name] = head
        self.recovered = True
        if moved:
            fsync_dir(self.corrupt_dir)
            fsync_dir(self.queue_dir)
        queued = set(rep.queued)
        for p in self.log_dir.iterdir():
            # A log whose message is gone belongs to a finished message (queue file is removed first).
            if p.name not in queued and not (self.corrupt_dir / p.name).exists() and not (self.queue_dir / p.name).exists():
                with contextlib.suppress(OSError):
                    p.unlink()
                    rep.dropped_logs += 1
        return rep

    # --- reading and the outcome log --------------------------------------------------------

    def ids(self) -> list[str]:
        return sorted(p.name for p in self.queue_dir.iterdir() if QUEUE_ID.match(p.name))

    def path(self, qid: str) -> Path:
        if not QUEUE_ID.match(qid):
            raise SpoolError(f"queue id {qid!r}: not a queue id")
        return self.queue_dir / qid

    def load(self, qid: str, *, with_data: bool = True) -> SpooledMessage:
        """The verified message; raises FileNotFoundError if gone, SpoolFormatError if corrupt.

        Without data the file is verified block by block, never held whole.
        """
        if not with_data:
            return read_head(self.path(qid))
        return decode(self.path(qid).read_bytes())

    def read_log(self, qid: str) -> list[dict[str, Any]]:
        try:
            return decode_log((self.log_dir / qid).read_bytes())
        except FileNotFoundError:
            return []

    def append_log(self, qid: str, records: list[dict[str, Any]]) -> None:
        """Append outcome records and fsync them before returning (blocking: call from a thread)."""
        if not records:
            return
        p = self.log_dir / qid
        new = not p.exists()
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"".join(encode_log(r) for r in records))
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            fsync_dir(self.log_dir)

    def finish(self, qid: str) -> None:
        """Every recipient is final: remove the message, then its log (blocking)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(qid))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.log_dir / qid)

    def quarantine(self, qid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path(qid), self.corrupt_dir / qid)

    def delete(self, qid: str) -> bool:
        """Operator removal (`appliance queue delete`): the message and its log."""
        existed = self.path(qid).exists()
        self.finish(qid)
        return existed

    # --- the running relay's lock and control requests --------------------------------------

    def acquire_lock(self) -> bool:
        """Taken by the delivery manager; the CLI uses it to tell whether a relay is running."""
        fd = os.open(self.dir / "relay.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def relay_running(self) -> bool:
        p = self.dir / "relay.lock"
        if not p.exists():
            return False
        fd = os.open(p, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def request(self, action: str, qid: str = "") -> Path:
        """Leave a control request (flush, retry-ID, delete-ID) for the running relay to act on."""
        name = f"{action}-{qid}" if qid else action
        p = self.control_dir / f"{name}.{secrets.token_hex(4)}"
        p.write_text(str(time.time()))
        return p

    def take_requests(self) -> Iterator[tuple[str, str]]:
        for p in sorted(self.control_dir.iterdir()):
            name = p.name.rsplit(".", 1)[0]
            action, _, qid = name.partition("-")
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                yield action, qid
