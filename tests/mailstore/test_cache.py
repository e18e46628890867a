"""The LRU of open stores: bounded, one object per root, an evicted store still works."""

from __future__ import annotations

from pathlib import Path

from appliance.mailstore import QuotaLimits, open_store
from appliance.mailstore.cache import _open, close_all


def test_bounded_and_evicted_store_reopens(tmp_path: Path) -> None:
    close_all()
    first = open_store(tmp_path / "u0", max_open=3)
    box = first.mailbox("INBOX")
    uid = box.append(b"Subject: x\r\n\r\n")
    assert open_store(tmp_path / "u0", max_open=3) is first
    for i in range(1, 6):
        open_store(tmp_path / f"u{i}", max_open=3)
    assert len(_open) == 3 and first.index._conns == []  # evicted and closed
    assert box.read(uid) == b"Subject: x\r\n\r\n"  # a session holding it reopens transparently
    assert open_store(tmp_path / "u0", max_open=3) is not first
    close_all()


def test_quota_kept_unless_given(tmp_path: Path) -> None:
    close_all()
    s = open_store(tmp_path / "q", quota=QuotaLimits(messages=5))
    assert open_store(tmp_path / "q").quota == QuotaLimits(messages=5)
    assert open_store(tmp_path / "q", quota=QuotaLimits()).quota == QuotaLimits()
    assert s is open_store(tmp_path / "q")
    close_all()
