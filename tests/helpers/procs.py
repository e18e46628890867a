"""Stopping a process a test started: politely, then for sure, and always reaped (no zombie, no leak)."""

from __future__ import annotations

import subprocess
from typing import Any


def stop(proc: subprocess.Popen[Any] | None, timeout: float = 20.0) -> None:
    """SIGTERM PROC; SIGKILL it if it has not exited after TIMEOUT seconds. None or already gone: nothing."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
