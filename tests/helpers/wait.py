"""The one bounded poll the tests use: wait for a condition a user would see, never sleep blindly.

It is not a timing assertion: the bound only keeps every wait finite (a hung peer fails the test with
what was awaited and the last value seen, instead of hanging CI).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_for(what: str, pred: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll PRED until it returns something truthy and return that; AssertionError after TIMEOUT s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {value!r})")
        time.sleep(interval)


def wait_logged(log_file: Path, *needles: str, timeout: float = 30.0) -> str:
    """Wait until LOG_FILE holds every one of NEEDLES and return its text.

    A supervised service's line reaches its log file through supervisord's pipe, a moment after the
    reply the client already read, so a test that reads the file at once can miss it.
    """

    def text() -> str:
        try:
            return log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def has_all() -> str:
        current = text()
        return current if all(n in current for n in needles) else ""

    try:
        return wait_for(f"{', '.join(map(repr, needles))} in {log_file}", has_all, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the log ends with:\n{text()[-2000:]}") from None


def refused_while_held(hold: Callable[[], list[Any]], probe: Callable[[], bool], tries: int = 5) -> bool:
    """True if PROBE (True: refused) sees the cap while the connections HOLD opens are open, in one of TRIES.

    Why tries: a server counts a connection when its reactor accepts it, a moment after the kernel has
    completed the TCP handshake that ``create_connection`` waits for (a loaded machine stretches that
    moment), and a lifetime cap may already have ended a held connection when the probe runs. Each
    attempt gives the reactor longer before probing. A server without the cap serves every attempt, so
    this still fails when the cap is missing.
    """
    for attempt in range(tries):
        held = hold()
        try:
            time.sleep(0.1 * attempt)
            if probe():
                return True
        finally:
            for conn in held:
                conn.close()
    return False


def closed_by_server(sock: Any, timeout: float = 60.0) -> bool:
    """Whether the server closed SOCK within TIMEOUT s (it sends nothing to a client that sent nothing)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
