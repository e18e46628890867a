"""The spool on a real file system: durable group commit, recovery, quarantine, outcome log."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from appliance.spool import Spool, SpoolError
from appliance.spool.format import decode, encode_log


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_store_writes_verified_file_and_group_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Count real fsync calls (the system call still happens).
    calls: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)  # list.append is atomic: fsyncs run in several threads
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    spool = Spool(tmp_path / "spool")

    async def many() -> list[str]:
        return await asyncio.gather(*(
            spool.store(f"s{i}@example.test", [f"r{i}@example.test"], b"Subject: %d\r\n\r\nbody\r\n" % i, {"n": i})
            for i in range(200)
        ))

    ids = run(many())
    spool.close()
    assert len(set(ids)) == 200
    assert sorted(os.listdir(spool.queue_dir)) == sorted(ids)
    assert os.listdir(spool.tmp_dir) == []
    for i, qid in enumerate(ids):
        msg = decode((spool.queue_dir / qid).read_bytes())
        assert msg.sender == f"s{i}@example.test" and msg.recipients == (f"r{i}@example.test",)
        assert msg.data == b"Subject: %d\r\n\r\nbody\r\n" % i and msg.meta == {"n": i}
    st = spool.stats
    # Every file is fsynced; one queue directory fsync covers a whole batch (or several).
    assert st["file_fsyncs"] == 200 and st["stored"] == 200
    assert st["dir_fsyncs"] <= st["batches"] < 200
    assert st["largest_batch"] > 1
    assert len(calls) == st["file_fsyncs"] + st["dir_fsyncs"]


def test_store_refuses_empty_recipients(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(SpoolError):
        run(spool.store("a@example.test", [], b"x", {}))
    spool.close()


def test_recover_drops_tmp_and_quarantines_corrupt(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")

    async def three() -> list[str]:
        return [await spool.store("a@example.test", ["b@example.test"], b"Subject: x\r\n\r\n%d\r\n" % i, {})
                for i in range(3)]

    good, truncated, flipped = run(three())
    spool.close()
    raw = (spool.queue_dir / truncated).read_bytes()
    (spool.queue_dir / truncated).write_bytes(raw[:-3])
    raw = bytearray((spool.queue_dir / flipped).read_bytes())
    raw[-2] ^= 0x20
    (spool.queue_dir / flipped).write_bytes(bytes(raw))
    (spool.queue_dir / "0000000000000000GARBAGE").write_bytes(b"not a spool file")
    (spool.tmp_dir / "half-written").write_bytes(b"APPLSPOOL1 10")
    (spool.log_dir / "00000000DEADBEEF0000").write_bytes(encode_log({"r": "x@example.test", "s": "delivered"}))

    rep = Spool(tmp_path / "spool").recover()
    assert rep.queued == [good]
    assert sorted(rep.corrupt) == sorted([truncated, flipped, "0000000000000000GARBAGE"])
    assert rep.dropped_tmp == 1 and rep.dropped_logs == 1
    assert os.listdir(spool.queue_dir) == [good]
    # Quarantined, never deleted: the bytes are still there for the operator.
    assert sorted(os.listdir(spool.corrupt_dir)) == sorted(rep.corrupt)
    assert (spool.corrupt_dir / "0000000000000000GARBAGE").read_bytes() == b"not a spool file"
    assert os.listdir(spool.tmp_dir) == []


def test_outcome_log_ignores_torn_last_line(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    qid = run(spool.store("a@example.test", ["b@example.test", "c@example.test"], b"x\r\n", {}))
    spool.close()
    spool.append_log(qid, [{"r": "b@example.test", "s": "delivered"}])
    with open(spool.log_dir / qid, "ab") as fh:
        fh.write(b'{"r":"c@example.test","s":"deliv')  # crash mid-append
    assert spool.read_log(qid) == [{"r": "b@example.test", "s": "delivered"}]
