"""Mailbox usage as local delivery sees it, without listing a Maildir's new/ for every message.

``appliance.mailstore.quota.usage()`` reads the account's index and lists ``new/``
(delivered, not yet indexed): its cost grows with the number of files waiting there,
about 2.3 µs each, in the delivery thread while it holds the GIL. A mailbox nobody
reads over IMAP collects thousands of them (the relay benchmark: 11,000, 25 ms per
delivery), and every delivery then paid for all earlier ones.

``UsageCache`` reads it once and then counts what this process delivers. A cached
figure is read afresh when

- the account's index file (or its WAL) changed: an IMAP or POP session appended,
  expunged or took files from new/ into cur/;
- it is older than ``MAX_AGE`` seconds: any other change (a file removed by hand, a
  mailbox without an index) is seen within that time.

Deliveries by this process are counted exactly, in order, by the delivery thread. The
relay's RCPT check (appliance/policy/quota.py) reads the same cache from a worker
thread, so a message that just filled a mailbox is refused at the next RCPT; the cache
is thread-safe for that (one lock, never held while reading the disk). The figure may
be wrong for up to MAX_AGE seconds (e.g. after a file was deleted by hand, or a file
another process delivered): too high defers a message with a temporary 452 4.2.2 and
it is retried, never dropped; too low lets local delivery decide (it defers the same way).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.mailstore import quota as mquota
from appliance.mailstore.index import INDEX_FILE

MAX_AGE = 2.0  # seconds a cached usage is trusted when nothing visible changed
MAX_ENTRIES = 10_000  # mailboxes remembered; the oldest read is forgotten first (read again when asked)

_Stamp = tuple[tuple[int, int] | None, ...]


@dataclass
class _Entry:
    used: mquota.QuotaUsage
    stamp: _Stamp
    read_at: float


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


class UsageCache:
    def __init__(self, max_age: float | None = None, max_entries: int = MAX_ENTRIES) -> None:
        self.max_age = MAX_AGE if max_age is None else max_age
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: dict[Path, _Entry] = {}
        # Deliveries counted per Maildir: a read that ran while one was counted may or may not have
        # seen its file, so it is returned but not kept (the next caller reads again).
        self._counted: dict[Path, int] = {}
        self.stats = {"reads": 0, "hits": 0}

    @staticmethod
    def _stamp(root: Path) -> _Stamp:
        index = root / INDEX_FILE
        return _file_stamp(index), _file_stamp(index.with_name(INDEX_FILE + "-wal"))

    def usage(self, root: Path) -> mquota.QuotaUsage:
        """Bytes and messages of the account whose Maildir is ROOT (two stat() calls when cached)."""
        stamp = self._stamp(root)
        now = time.monotonic()
        with self._lock:
            e = self._entries.get(root)
            if e is not None and e.stamp == stamp and now - e.read_at < self.max_age:
                self.stats["hits"] += 1
                return e.used
            counted = self._counted.setdefault(root, 0)
        # Stamp first, then read: a change made while reading gives a new stamp next time.
        used = mquota.usage(root)
        with self._lock:
            self.stats["reads"] += 1
            self._entries.pop(root, None)  # re-inserted last: the dict's order is the age of the reads
            if self._counted.get(root) == counted:  # (None: forgotten meanwhile, not kept either)
                self._entries[root] = _Entry(used, stamp, now)
                while len(self._entries) > self.max_entries:
                    oldest = next(iter(self._entries))
                    del self._entries[oldest]
                    self._counted.pop(oldest, None)
            if len(self._counted) > 2 * self.max_entries:  # reads not kept leave a counter behind
                self._counted = {r: n for r, n in self._counted.items() if r in self._entries}
        return used

    def delivered(self, root: Path, size: int, count: int = 1) -> None:
        """COUNT files of SIZE octets in all were just delivered into ROOT's Maildir (by this process)."""
        with self._lock:
            e = self._entries.get(root)
            if e is not None:
                e.used = mquota.QuotaUsage(e.used.bytes + size, e.used.messages + count)
            if root in self._counted:
                self._counted[root] += 1
