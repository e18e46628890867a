"""All store calls go through here: a bounded thread pool, never the reactor thread.

The mail store is blocking (SQLite, fsync, Maildir renames). Every call runs in one
bounded pool (``POOL_SIZE`` threads) so thousands of sessions cannot create
thousands of threads. Changes to one account are serialized (a DeferredLock per
account root): the index is one SQLite file per account, and concurrent writers
would only queue on its lock inside worker threads, holding them idle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import defer, reactor, threads
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")
POOL_SIZE = 8

_pool: ThreadPool | None = None
_locks: dict[str, tuple[defer.DeferredLock, int]] = {}


def pool() -> ThreadPool:
    global _pool
    if _pool is None:
        _pool = ThreadPool(minthreads=0, maxthreads=POOL_SIZE, name="imap-store")
        _pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", _pool.stop)  # type: ignore[attr-defined]
    return _pool


def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
    """FN(*ARGS) in the store pool; a Deferred with its result."""
    return threads.deferToThreadPool(reactor, pool(), fn, *args, **kwargs)  # type: ignore[arg-type]


async def write(root: Path | str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """FN in the pool, one at a time per account ROOT (store mutations)."""
    key = str(root)
    lock, users = _locks.get(key, (None, 0))
    if lock is None:
        lock = defer.DeferredLock()
    _locks[key] = (lock, users + 1)
    await lock.acquire()
    try:
        return await run(fn, *args, **kwargs)
    finally:
        lock.release()
        lk, n = _locks[key]
        if n <= 1:
            del _locks[key]
        else:
            _locks[key] = (lk, n - 1)
