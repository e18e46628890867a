"""Fault injection for crash-safety tests: ``APPLIANCE_FAULT=POINT:N`` exits hard at the Nth pass of POINT.

``os._exit`` skips every cleanup handler, which is as close to kill -9 as a
process can do to itself, at an exact place (between fsync and rename, after
the rename but before the directory fsync, just before the 250 reply...).
Points used: ``after_write``, ``after_fsync``, ``after_rename``, ``after_dirsync``,
``after_body_write`` (spool) and ``before_reply`` (the relay's SMTP code, just before it answers 250),
``after_deliver`` (delivery, before the outcome is logged).
Unset (the normal case) this costs one dict lookup.
"""

from __future__ import annotations

import os
import threading

_spec = os.environ.get("APPLIANCE_FAULT", "")
_point, _, _count = _spec.partition(":")
_remaining = int(_count or "1") if _point else 0
_lock = threading.Lock()


def point(name: str) -> None:
    """Die here (exit status 137, like SIGKILL) if APPLIANCE_FAULT names this point and its count is reached."""
    global _remaining
    if not _point or name != _point:
        return
    with _lock:
        _remaining -= 1
        if _remaining <= 0:
            os._exit(137)
