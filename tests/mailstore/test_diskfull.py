"""A full file system: APPEND and COPY get OVERQUOTA (as Dovecot answers), and nothing is half-written."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.mailstore import MailStore, MailstoreError

pytestmark = pytest.mark.root


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("needs root to mount a tmpfs (run the suite as root, as CI does)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_append_refused_cleanly(small_fs: Path) -> None:
    store = MailStore.open(small_fs / "u", ["Sent"])
    box = store.mailbox("INBOX")
    msg = b"Subject: big\r\n\r\n" + b"x" * 50_000 + b"\r\n"
    got: list[int] = []
    with pytest.raises(MailstoreError) as err:
        for _ in range(100):  # 5 MB into 1 MB: it must fill up
            got.append(box.append(msg))
    assert err.value.code == "OVERQUOTA"
    assert got and list(box.state().uids) == got  # every UID returned is there, no other
    assert all(box.read(u) == msg for u in got)
    assert os.listdir(small_fs / "u" / "tmp") == []  # nothing half-written left behind
    # COPY needs no data blocks (hard links), only index pages: it either works or leaves nothing.
    sent = store.mailbox("Sent")
    try:
        pairs = box.copy_to(got, sent)
    except MailstoreError as exc:
        assert exc.code == "OVERQUOTA"
        pairs = []
    assert list(sent.state().uids) == [d for _, d in pairs]
    assert os.listdir(small_fs / "u" / ".Sent" / "tmp") == []
    assert store.status("INBOX").messages == len(got)
    store.close()
