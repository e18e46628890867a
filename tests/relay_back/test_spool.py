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


def test_streamed_message_costs_one_fsync_and_reads_back_whole(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()  # pre-creates the files (their names durable)
    calls: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    body = b"\r\n" + b"line of the body\r\n" * 40_000  # several flushes

    async def one() -> str:
        inc = spool.begin("a@example.test", ["b@example.test"], {"n": 1})
        tapped: list[bytes] = []
        inc.add_tap(tapped.append)  # e.g. DKIM's body hash
        for i in range(0, len(body), 7000):
            await inc.write(body[i:i + 7000])
        # What a data check reads back, the last (buffered) block included.
        assert b"".join(inc.iter_body()) == body

        def header_block() -> bytes:
            # Made after the last body byte went through the taps (a DKIM signature needs them all).
            assert b"".join(tapped) == body
            return b"Received: by test\r\nSubject: s\r\n"

        return await inc.commit(header_block)

    qid = run(one())
    spool.close()
    assert len(calls) == 1  # the file's fsync, no directory fsync
    msg = spool.load(qid)
    assert msg.data == b"Received: by test\r\nSubject: s\r\n" + body
    assert msg.sender == "a@example.test" and msg.recipients == ("b@example.test",) and msg.meta == {"n": 1}
    assert spool.precreated.stats["fresh"] == 0


def test_refused_stream_leaves_nothing_and_recovery_sorts_incoming(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()

    async def some() -> tuple[str, Path]:
        refused = spool.begin("a@example.test", ["b@example.test"], {})
        await refused.write(b"\r\n" + b"x" * 300_000)
        await refused.abort()
        assert refused.path.exists() and refused.path.stat().st_size == 0  # emptied, back in the pool
        # A crash while the body arrived: written, never committed.
        torn = spool.begin("a@example.test", ["b@example.test"], {})
        await torn.write(b"\r\n" + b"y" * 300_000)
        kept = spool.begin("a@example.test", ["b@example.test"], {})
        await kept.write(b"\r\nz\r\n")
        qid = await kept.commit(lambda: b"Subject: kept\r\n")
        return qid, torn.path

    qid, torn_path = run(some())
    spool.close()
    assert torn_path.stat().st_size > 300_000
    # Committed but not yet renamed when the box died: recovery must still find it.
    os.rename(spool.queue_dir / qid, spool.incoming_dir / "fcommitted")
    bad = bytearray((spool.incoming_dir / "fcommitted").read_bytes())
    (spool.incoming_dir / "fdamaged").write_bytes(bytes(bad[:-1]) + bytes([bad[-1] ^ 1]))
    rep = Spool(tmp_path / "spool").recover()
    assert rep.queued == [qid] and rep.corrupt == ["fdamaged"]
    assert spool.load(qid).data == b"Subject: kept\r\n\r\nz\r\n"
    assert not torn_path.exists()  # no first line: never acknowledged, dropped
    assert os.listdir(spool.corrupt_dir) == ["fdamaged"]
    assert all(p.stat().st_size == 0 for p in spool.incoming_dir.iterdir())  # only the fresh pool is left
