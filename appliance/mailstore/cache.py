"""A bounded LRU of open stores per process, so file descriptors stay bounded with many accounts.

Each open store holds, per thread that used it, one SQLite connection (three
descriptors in WAL mode: the database, the log and the shared memory). With N
stores and T worker threads that is at most 3·N·T descriptors. An evicted store
is closed; a session still holding it simply reopens connections on its next
call (appliance.mailstore.index.Index.close), so eviction is never an error.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from appliance.mailstore.account import MailStore
from appliance.mailstore.quota import QuotaLimits

MAX_OPEN = 64
_open: OrderedDict[Path, MailStore] = OrderedDict()
_lock = threading.Lock()


def open_store(root: str | Path, special_folders: Iterable[str] = (), outbox: str = "",
               quota: QuotaLimits | None = None, max_open: int = MAX_OPEN) -> MailStore:
    """The shared MailStore of ROOT (opened on first use; the least recently used beyond MAX_OPEN closed)."""
    key = Path(root).resolve()
    with _lock:
        store = _open.get(key)
        if store is not None and not store.index.broken:
            _open.move_to_end(key)
            if quota is not None:  # callers without an opinion do not lift the account's quota
                store.quota = quota
            return store
        if store is not None:  # found corrupt while in use: reopen, which rebuilds it
            del _open[key]
            store.close()
    # Opening (and possibly rebuilding) runs outside the LRU lock: other accounts need not wait.
    store = MailStore.open(key, special_folders, outbox, quota)
    evicted: list[MailStore] = []
    with _lock:
        existing = _open.get(key)
        if existing is not None:  # another thread opened it meanwhile: use one object per root
            evicted.append(store)
            store = existing
        else:
            _open[key] = store
        _open.move_to_end(key)
        while len(_open) > max_open:
            evicted.append(_open.popitem(last=False)[1])
    for old in evicted:
        old.close()
    return store


def close_all() -> None:
    with _lock:
        stores = list(_open.values())
        _open.clear()
    for s in stores:
        s.close()
