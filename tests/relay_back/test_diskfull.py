"""Disk full on a small tmpfs spool: 452 4.3.1, and never a 250 for a message that is not on disk."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import Config
from appliance.spool.format import decode
from tests.relay_back.relayproc import Load, RelayProcess, raise_member_limits

pytestmark = [pytest.mark.peers, pytest.mark.root]


@pytest.fixture
def tmpfs_spool(devbox: tuple[Path, Config]) -> Iterator[Config]:
    if os.geteuid() != 0:
        pytest.fail("needs root to mount a tmpfs (run the suite as root, as CI does)")
    _, cfg = devbox
    spool = Path(cfg.paths.spool_dir)
    spool.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(spool)], check=True)
    try:
        yield cfg
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


def test_disk_full_answers_452_and_every_250_is_on_disk(tmpfs_spool: Config, tmp_path: Path) -> None:
    cfg = tmpfs_spool
    raise_member_limits(cfg)
    # Keep everything queued: alice's Maildir path is a plain file, so local delivery defers (4.3.0).
    box_mail = Path(cfg.paths.mail_dir) / "example.test"
    box_mail.mkdir(parents=True, exist_ok=True)
    (box_mail / "alice").write_text("not a maildir\n")
    relay = RelayProcess(Path(cfg.source), tmp_path / "relay.log").start(cfg)
    try:
        load = Load(cfg.listeners.mx.host, cfg.listeners.mx.port, "alice@example.test", sessions=3,
                    max_messages=60, size=100_000)
        load.run()
    finally:
        relay.stop()
    codes = [c for c, _ in load.replies]
    assert 250 in codes and 452 in codes, f"replies: {sorted(set(codes))}"
    assert set(codes) <= {250, 452}, f"unexpected replies: {load.replies}"
    assert all(t.startswith("4.3.1") for c, t in load.replies if c == 452)
    queue = Path(cfg.paths.spool_dir) / "queue"
    for code, text in load.replies:
        if code == 250:
            m = re.search(r"\b([0-9A-F]{16,40})\b", text)
            assert m, f"no queue id in {text!r}"
            msg = decode((queue / m.group(1)).read_bytes())  # present, complete and checksummed
            assert b"load.test" in msg.data
    assert not any((Path(cfg.paths.spool_dir) / "tmp").iterdir()), "partial files left in tmp/"
    # Refused messages' files were emptied (and kept as pre-created files for the next ones).
    incoming = Path(cfg.paths.spool_dir) / "incoming"
    assert all(p.stat().st_size == 0 for p in incoming.iterdir()), "partial files left in incoming/"
