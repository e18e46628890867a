"""Who hit which limit lately: the relay's `limited entry=... limit=KIND key=KEY` log lines
(appliance/ratelimit/limiter.py), read from the end of LOG_DIR/relay.log."""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from collections import Counter
from pathlib import Path

from appliance.config import Config

TAIL_BYTES = 4 * 1024 * 1024  # only the end of the log is read: bounded work per page view
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ \S+ \S+: limited entry=(\S+) limit=(\S+) key=(\S+)")


def recent_hits(cfg: Config, seconds: int = 3600, now: float | None = None) -> list[tuple[str, str, str, int]]:
    """(limit kind, key, entry point, count) in the last SECONDS, most hits first."""
    since = (time.time() if now is None else now) - seconds
    path = Path(cfg.paths.log_dir) / "relay.log"
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - TAIL_BYTES))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    hits: Counter[tuple[str, str, str]] = Counter()
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        # logging's asctime is local time.
        when = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
        if when >= since:
            hits[(m.group(3), m.group(4), m.group(2))] += 1
    return [(kind, key, entry, n) for (kind, key, entry), n in hits.most_common(200)]
