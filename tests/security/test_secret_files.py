"""Secret files (TLS key, DKIM key, registry signing keys) are 0600 from the moment they exist.

The check runs *during* creation: every file descriptor the writer fsyncs (its
content is complete then, the rename not yet done) must already be unreadable
by group and others, and the final file must be 0600. A leftover temporary
file from an earlier crash, made world-readable, must not lend the key its mode.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner

from appliance import fsutil
from appliance.registry.repo import write_private_key
from appliance.tlsfiles import make_dkim_key, make_self_signed


@pytest.fixture
def fsynced_modes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """(inode, mode, size) of every regular file fsynced while the test runs; the real fsync still runs."""
    seen: list[tuple[int, int, int]] = []
    real = os.fsync

    def observing_fsync(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            seen.append((st.st_ino, stat.S_IMODE(st.st_mode), st.st_size))
        real(fd)

    monkeypatch.setattr(os, "fsync", observing_fsync)
    return seen


def _leave_world_readable_leftovers(path: Path) -> None:
    # Names a crashed writer of today's or an earlier version could have left behind.
    for name in (f"{path.name}.tmp", f".{path.name}.tmp", f".{path.name}{fsutil.TMP_MARK}000000000000"):
        leftover = path.parent / name
        leftover.write_bytes(b"left over by a crash\n")
        leftover.chmod(0o644)


def _assert_private_throughout(path: Path, seen: list[tuple[int, int, int]]) -> None:
    # The rename keeps the inode: these are the fsyncs of the key's own content, before it got its name.
    ino = path.stat().st_ino
    written = [(m, n) for i, m, n in seen if i == ino and n > 0]
    assert written, f"{path}: nothing was fsynced while writing it"
    for mode, size in written:
        assert mode & 0o077 == 0, f"{path}: a {size}-byte file was written with mode {mode:o} before the rename"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for f in path.parent.iterdir():
        if f.name.startswith(f".{path.name}{fsutil.TMP_MARK}"):
            pytest.fail(f"temporary file {f} left behind")


@pytest.mark.parametrize("umask", [0o000, 0o022])
@pytest.mark.parametrize("kind", ["tls", "dkim", "registry"])
def test_secret_key_is_0600_from_creation(tmp_path: Path, fsynced_modes: list[tuple[int, int, int]], kind: str,
                                          umask: int) -> None:
    writers: dict[str, Callable[[], Path]] = {
        "tls": lambda: (make_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", ["box.test"]),
                        tmp_path / "key.pem")[1],
        "dkim": lambda: (make_dkim_key(tmp_path / "dkim.key", bits=1024), tmp_path / "dkim.key")[1],
        "registry": lambda: write_private_key(tmp_path / "keys", "root", CryptoSigner.generate_ed25519()),
    }
    if kind == "registry":
        probe = CryptoSigner.generate_ed25519()
        (tmp_path / "keys").mkdir(mode=0o755)
        # The key's name is known only once it exists; leave leftovers for the name it will get.
        _leave_world_readable_leftovers(tmp_path / "keys" / f"root-{probe.public_key.keyid[:16]}.key")
        writers["registry"] = lambda: write_private_key(tmp_path / "keys", "root", probe)
    else:
        _leave_world_readable_leftovers(tmp_path / ("key.pem" if kind == "tls" else "dkim.key"))
    old = os.umask(umask)
    try:
        path = writers[kind]()
    finally:
        os.umask(old)
    _assert_private_throughout(path, fsynced_modes)
    if kind == "registry":
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    if kind == "tls":
        assert stat.S_IMODE((tmp_path / "cert.pem").stat().st_mode) == 0o644  # public: stays readable


def test_atomic_write_replaces_a_file_keeping_no_old_mode(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text("old")
    target.chmod(0o666)
    fsutil.atomic_write(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]
