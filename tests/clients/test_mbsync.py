"""mbsync (isync) two-way sync of 10,000 messages between the box and a local Maildir (issue 14 item 4).

The box's INBOX is filled straight in Maildir (bench/imap/corpus.py, as the relay leaves files);
mbsync pulls everything, a second run transfers nothing (its counters say so), then a flag
changed on each side reaches the other side.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from bench.imap import corpus
from tests.access.conftest import PASSWORD, imap
from tests.conftest import require
from tests.helpers.box import Box

COUNT = 10_000
USER = "mbsync"


@pytest.fixture(scope="module")
def filled(access_box: Box) -> str:
    address = access_box.add_user(USER, PASSWORD)
    corpus.build(access_box.maildir(address), COUNT)
    return address


def _rc(box: Box, address: str, local: Path) -> Path:
    rc = local.parent / "mbsyncrc"
    rc.write_text(
        f"IMAPAccount box\nHost {box.host('imap')}\nPort {box.port('imap')}\nUser {address}\n"
        f'Pass "{PASSWORD}"\nSSLType STARTTLS\nCertificateFile {box.cfg.tls.cert}\nAuthMechs LOGIN\n\n'
        "IMAPStore remote\nAccount box\n\n"
        f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
        "Channel sync\nFar :remote:\nNear :local:\nPatterns INBOX\nCreate Both\nExpunge None\nSync All\n"
        "SyncState *\n")
    return rc


def _sync(rc: Path) -> dict[str, tuple[int, ...]]:
    """One mbsync run; its final counters for the far side (F, the box) and the near side (N, the Maildir)."""
    # mbsync shows its counters only on a terminal: give it one.
    master, slave = pty.openpty()
    proc = subprocess.Popen(["mbsync", "-c", str(rc), "-V", "sync"], stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave)
    os.close(slave)
    raw = b""
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the terminal's other end closed (mbsync exited)
                    break
                if not chunk:
                    break
                raw += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    out = raw.decode(errors="replace").replace("\r", "\n")
    assert proc.returncode == 0, f"mbsync exited {proc.returncode}:\n{out[-4000:]}"
    for complaint in ("Error", "IMAP error", "unexpected", "Warning", "bogus", "malformed"):
        assert complaint not in out, f"mbsync complained ({complaint!r}):\n{out[-4000:]}"
    counters: dict[str, tuple[int, ...]] = {}
    for side in ("F", "N"):  # e.g. "N: +10000/10000 *0/0 #0/0" (+new *flags #trashed); the last line: totals
        found = re.findall(rf"\b{side}: \+(\d+)/(\d+) +\*(\d+)/(\d+) +#(\d+)/(\d+)", out)
        assert found, f"no {side}: counters in mbsync's output:\n{out[-4000:]}"
        counters[side] = tuple(int(x) for x in found[-1])
    return counters


def _local_files(local: Path) -> list[Path]:
    inbox = local / "INBOX"
    return sorted([*(inbox / "cur").iterdir(), *(inbox / "new").iterdir()])


def test_mbsync_two_way_sync_of_10000_messages(access_box: Box, filled: str, tmp_path: Path) -> None:
    require("mbsync")
    local = tmp_path / "mail"
    local.mkdir()
    rc = _rc(access_box, filled, local)

    first = _sync(rc)
    assert first["N"][0] == COUNT, f"first run: {first}"  # N: +10000 new messages near
    files = _local_files(local)
    assert len(files) == COUNT
    assert sum(1 for f in files if f.name.split(":2,")[-1].count("S")) == sum(1 for i in range(COUNT) if corpus.seen(i))

    second = _sync(rc)
    assert second["F"][0] == second["N"][0] == 0, f"the second run transferred messages: {second}"
    assert second["F"][2] == second["N"][2] == 0, f"the second run changed flags: {second}"

    # A flag set on the server (message 1) and one set locally (the last message's file).
    m = imap(access_box, USER)
    m.select("INBOX")
    assert m.store("1", "+FLAGS", "(\\Flagged)")[0] == "OK"
    m.logout()
    last = max(files, key=lambda f: int(re.search(r",U=(\d+)", f.name).group(1)))  # type: ignore[union-attr]
    uid = int(re.search(r",U=(\d+)", last.name).group(1))  # type: ignore[union-attr]
    base, _, info = last.name.partition(":2,")
    last.rename(last.with_name(f"{base}:2,{''.join(sorted(info + 'F'))}"))

    third = _sync(rc)
    assert third["F"][0] == third["N"][0] == 0, third
    assert third["F"][2] == 1 and third["N"][2] == 1, f"one flag change each way expected: {third}"
    m = imap(access_box, USER)
    m.select("INBOX")
    _, data = m.uid("FETCH", str(uid), "(FLAGS)")
    m.logout()
    assert b"\\Flagged" in data[0], data
    first_file = next(f for f in _local_files(local) if re.search(r",U=1(?:\D|$)", f.name))
    assert "F" in first_file.name.split(":2,")[-1], first_file.name
