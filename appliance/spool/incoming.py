"""Messages streamed into the spool as they arrive, into files whose directory entries are already durable.

``Spool.begin()`` hands out an ``Incoming``: the relay writes the body to it
while DATA is still arriving (``write()``, buffered, written by a spool thread),
then ``commit(make_header_block)`` writes the rest of the body and the final
header fields after it (all in one spool-thread call, so a small message costs
the event loop one thread hand-off), the fixed-width first line at offset 0,
fsyncs the file **once**, and renames it into ``queue/``. The file was
pre-created in ``incoming/`` and that directory fsynced long before
(``Precreated``), so the fsync of the file is the only journal commit a 250
waits for. Why that is durable: docs/spool.md
"Pre-created files".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.fsutil import fsync_dir
from appliance.spool import faults
from appliance.spool.format import PREFIX2_LEN, SpooledMessage, envelope_bytes, prefix2

if TYPE_CHECKING:
    from appliance.spool.spool import Spool

log = logging.getLogger("appliance.spool")

FLUSH_BYTES = 64 * 1024  # body bytes a session buffers before a spool thread writes them
# Pre-created files: refill when fewer than POOL_LOW are left, up to POOL_HIGH, FILL_CHUNK names per
# directory fsync (each chunk usable as soon as it is durable). With 32/128, 100 sessions emptied the
# pool before a refill (creating files waits for the journal that every 250's fsync also waits for):
# fresh files then cost each 250 a second fsync (py-spy, bench/relay 1 KB / 100: +30 % commit wait).
POOL_LOW = 128
POOL_HIGH = 1024
POOL_START = 256  # made before the relay listens (above POOL_LOW: no refill at the first message)
FILL_CHUNK = 128
READ_BLOCK = 1 << 20


class Precreated:
    """Empty files in ``incoming/`` whose names are durable (the directory was fsynced after creating them)."""

    def __init__(self, directory: Path, io_pool: concurrent.futures.Executor) -> None:
        self.dir = directory
        self._io = io_pool
        self._free: list[str] = []
        self._lock = threading.Lock()
        self._refilling = False
        self.stats = {"taken": 0, "fresh": 0, "refills": 0}

    def fill(self, upto: int = POOL_HIGH) -> None:
        """Create files up to UPTO, FILL_CHUNK at a time, each chunk's names made durable with one
        directory fsync before it is handed out (blocking)."""
        try:
            while True:
                with self._lock:
                    want = min(FILL_CHUNK, upto - len(self._free))
                if want <= 0 or not self._fill_chunk(want):
                    return
        finally:
            with self._lock:
                self._refilling = False

    def _fill_chunk(self, want: int) -> bool:
        made: list[str] = []
        try:
            for _ in range(want):
                name = "f" + secrets.token_hex(8)
                fd = os.open(self.dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.close(fd)
                made.append(name)
            fsync_dir(self.dir)
        except OSError as exc:
            # Disk full or the like: the files made are not known to be durable; take them back.
            log.warning("pre-creating spool files failed: %s", exc)
            for name in made:
                with contextlib.suppress(OSError):
                    os.unlink(self.dir / name)
            return False
        with self._lock:
            self._free += made
            self.stats["refills"] += 1
        return True

    def take(self) -> tuple[str, bool]:
        """A file name and whether it is fresh (not pre-created: its commit must also fsync the directory)."""
        with self._lock:
            name = self._free.pop() if self._free else None
            refill = len(self._free) < POOL_LOW and not self._refilling
            if refill:
                self._refilling = True
        if refill:
            self._io.submit(self.fill)
        if name is not None:
            self.stats["taken"] += 1
            return name, False
        self.stats["fresh"] += 1
        return "f" + secrets.token_hex(8), True

    def give_back(self, name: str) -> None:
        """An emptied file whose name is still durable."""
        with self._lock:
            self._free.append(name)


class Incoming:
    """One message being received into a spool file (see the module docstring)."""

    def __init__(self, spool: Spool, head: SpooledMessage, name: str, fresh: bool) -> None:
        self.spool = spool
        self.head = head
        self.path = spool.incoming_dir / name
        self._name = name
        self._fresh = fresh
        self._env = envelope_bytes(head)
        self._fd: int | None = None
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._written = 0  # body bytes in the file
        self._sha = hashlib.sha256()
        self._taps: list[Callable[[bytes], None]] = []
        self._finished = False
        self.header_size = 0  # of the committed header block

    @property
    def id(self) -> str:
        return self.head.id

    @property
    def body_size(self) -> int:
        return self._written + self._pending_len

    def add_tap(self, tap: Callable[[bytes], None]) -> None:
        """TAP sees every body byte from now on, in order, in a spool thread (e.g. a DKIM body hash)."""
        self._taps.append(tap)

    async def _run(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self.spool.io_pool, fn, *args)

    async def write(self, data: bytes) -> None:
        """Append body bytes; raises SpoolFull or SpoolError (the message is then refused)."""
        if not data:
            return
        self._pending.append(data)
        self._pending_len += len(data)
        if self._pending_len >= FLUSH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        """Write what is buffered (before a reader looks at the file)."""
        if self._pending:
            await self._run(self._flush_sync)

    def _flush_sync(self) -> None:
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_len = 0
        try:
            if self._fd is None:
                self.spool.check_room(len(data))
                # Empty: pre-created so, or emptied by the abort that gave its name back (no ftruncate
                # here: it would change the inode's times, a journal handle per message for nothing).
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                self._write_all(b"\0" * PREFIX2_LEN + self._env)
                self._sha.update(self._env)
            elif data:
                self.spool.check_room(len(data))
            self._write_all(data)
        except OSError as exc:
            raise self.spool.os_error(exc, "write") from None
        if data:
            faults.point("after_body_write")
        self._sha.update(data)
        for tap in self._taps:
            tap(data)
        self._written += len(data)

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def iter_body(self, block: int = READ_BLOCK) -> Iterator[bytes]:
        """The body received so far, read back from the file in blocks (blocking: a worker thread's,
        while the event loop awaits it, so nothing is appended meanwhile). Writes what is buffered first."""
        if self._pending:
            self._flush_sync()
        if self._fd is None:
            return
        pos, end = PREFIX2_LEN + len(self._env), PREFIX2_LEN + len(self._env) + self._written
        while pos < end:
            chunk = os.pread(self._fd, min(block, end - pos), pos)
            if not chunk:
                raise OSError(f"{self.path}: shorter than written")
            pos += len(chunk)
            yield chunk

    async def commit(self, make_header_block: Callable[[], bytes]) -> str:
        """Write what is buffered, then MAKE_HEADER_BLOCK()'s header block (called in the spool thread once
        every body byte went through the taps: a DKIM signature needs the body hash); make the message
        durable with one fsync and move it into queue/; return its queue id."""
        await self._run(self._commit_sync, make_header_block)
        self.spool.committed(self.head)
        return self.head.id

    def _commit_sync(self, make_header_block: Callable[[], bytes]) -> None:
        self._flush_sync()
        fd = self._fd
        assert fd is not None
        try:
            header_block = make_header_block()
            self.header_size = len(header_block)
            self.spool.check_room(len(header_block))
            self._write_all(header_block)
            self._sha.update(header_block)
            os.pwrite(fd, prefix2(len(self._env), len(header_block), self._written, self._sha.hexdigest()), 0)
            faults.point("after_write")
            os.fsync(fd)  # the one commit a 250 waits for (the name is durable already unless fresh)
            faults.point("after_fsync")
            if self._fresh:
                fsync_dir(self.path.parent)
        except OSError as exc:
            self._discard_sync()
            raise self.spool.os_error(exc, "commit") from None
        except BaseException:
            self._discard_sync()
            raise
        os.close(fd)
        self._fd = None
        self._finished = True
        # No directory fsync needed: after a crash the file is in incoming/ or in queue/ (rename
        # is atomic), and recovery takes a verified file from either place.
        try:
            os.rename(self.path, self.spool.queue_dir / self.head.id)
        except OSError as exc:
            log.error("%s: could not move %s into queue/ (%s); recovery will", self.head.id, self.path, exc)
        faults.point("after_rename")

    async def abort(self) -> None:
        """The message is refused: empty the file and keep its durable name for the next message."""
        if self._finished:
            return
        self._finished = True
        self._pending.clear()
        await self._run(self._abort_sync)

    def _abort_sync(self) -> None:
        fd = self._fd
        self._fd = None
        if fd is None:
            if not self._fresh:
                self.spool.precreated.give_back(self._name)
            return
        try:
            os.ftruncate(fd, 0)  # no first line was written: recovery would drop it anyway
            os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            return
        if self._fresh:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        else:
            self.spool.precreated.give_back(self._name)

    def _discard_sync(self) -> None:
        """A failed commit: its first line may be on disk, so the file goes (never reused)."""
        self._finished = True
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):
            os.unlink(self.path)
