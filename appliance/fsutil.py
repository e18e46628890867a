"""Filesystem primitives shared by the whole appliance: directory fsync and atomic writes.

One place for "write a file so that a crash leaves either the old or the new
content, and a secret is never readable by anyone else, not even for a moment":

* ``atomic_write(path, data, mode=0o600)`` creates a fresh temporary file next to
  PATH with ``O_CREAT | O_EXCL`` and MODE from the very first byte (the kernel
  applies the umask, which can only narrow MODE; ``fchmod`` on the descriptor
  then sets exactly MODE before any data is written), writes, fsyncs, renames
  over PATH and fsyncs the directory. The umask itself is never changed: it is
  process-wide, and lowering it even briefly would widen other threads' files. The temporary name is unique, so a leftover from a
  crash is never reused with its old mode; leftovers of this module's pattern
  are removed before writing.
* ``fsync_dir(path)`` makes a rename or create in PATH durable.
"""

from __future__ import annotations

import os
from pathlib import Path

# The suffix marks our temporary files, so a crashed writer's leftovers can be found and removed.
TMP_MARK = ".tmp-"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync the directory PATH, so renames and creations inside it survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_exclusive(path: Path, mode: int) -> int:
    # O_EXCL: a fresh inode, so the create mode applies (a reused file would keep its old mode).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    # The umask may have narrowed MODE (e.g. 0o644 under umask 077); set it exactly, on the
    # descriptor (never the path), before a byte is written. It never widens beyond MODE.
    os.fchmod(fd, mode)
    return fd


def remove_leftovers(path: str | os.PathLike[str]) -> None:
    """Delete temporary files an interrupted ``atomic_write(PATH, ...)`` left behind."""
    p = Path(path)
    prefix = f".{p.name}{TMP_MARK}"
    try:
        names = os.listdir(p.parent)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(p.parent / name)
            except FileNotFoundError:
                pass


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, mode: int = 0o600) -> None:
    """Replace PATH with DATA atomically and durably; the file has MODE from its creation on.

    The parent directory must exist (creating it is the caller's decision: its mode matters too).
    """
    p = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    remove_leftovers(p)
    # os.urandom is what secrets.token_hex reads; importing secrets would load OpenSSL (hmac) into
    # every process that writes a file, the stdlib-only watchdog included.
    tmp = p.parent / f".{p.name}{TMP_MARK}{os.urandom(6).hex()}"
    fd = _open_exclusive(tmp, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(p.parent)


def make_private_dir(path: str | os.PathLike[str], mode: int = 0o700) -> Path:
    """Create PATH (and parents) with MODE; an existing directory is tightened to MODE."""
    p = Path(path)
    # mkdir's mode is narrowed by the umask, never widened; chmod then sets it exactly.
    p.mkdir(parents=True, exist_ok=True, mode=mode)
    os.chmod(p, mode)
    return p
