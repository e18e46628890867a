"""UIDs and UIDVALIDITY survive a lost index, a corrupt index, and the move from the old store."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from appliance.mailstore import MailStore, MailstoreError
from appliance.mailstore.fill import PENDING_NAMES
from appliance.mailstore.index import INDEX_FILE, REBUILDS
from appliance.mailstore.maildir import without_uid
from appliance.mailstore.uidmap import UID_MAP
from tests.mailstore.conftest import SPECIALS, deliver

MSG = b"Subject: r\n\nbody\n"


def _fill(store: MailStore, root: Path) -> dict[str, object]:
    inbox = store.mailbox("INBOX")
    for _ in range(5):
        deliver(root, MSG)
    inbox.sync()
    inbox.store([2], "add", ["\\Seen", "\\Flagged"])
    inbox.store([3], "add", ["$Label1"])
    inbox.expunge([5])  # the highest UID leaves no file behind
    store.create("Work")
    work = store.mailbox("Work")
    work.append(MSG, ["\\Answered"])
    return {"inbox": (inbox.uidvalidity, list(inbox.state().uids), inbox.state().uidnext, inbox.state().highestmodseq,
                      [r.flags for r in inbox.records_range([(1, 10)]) if r.uid != 3]),
            "work": (work.uidvalidity, list(work.state().uids))}


def _snapshot(store: MailStore) -> dict[str, object]:
    inbox, work = store.mailbox("INBOX"), store.mailbox("Work")
    return {"inbox": (inbox.uidvalidity, list(inbox.state().uids), inbox.state().uidnext, None,
                      [r.flags for r in inbox.records_range([(1, 10)]) if r.uid != 3]),
            "work": (work.uidvalidity, list(work.state().uids))}


def test_deleted_index_rebuilt_with_same_uids(store: MailStore, root: Path) -> None:
    before = _fill(store, root)
    hms = before["inbox"][3]
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(root / INDEX_FILE) + suffix).unlink(missing_ok=True)
    again = MailStore.open(root, SPECIALS, "Outbox")
    after = _snapshot(again)
    assert after["work"] == before["work"]
    assert after["inbox"][:3] == before["inbox"][:3]  # UIDVALIDITY, UIDs and UIDNEXT (5 was expunged)
    assert after["inbox"][4] == before["inbox"][4]  # standard flags come back from the file names
    box = again.mailbox("INBOX")
    assert box.state().highestmodseq > hms  # RFC 7162: MODSEQs never go back
    recs = box.records_range([(1, 10)])
    st = again.status("INBOX")
    assert (st.messages, st.unseen, st.deleted) == (4, sum("\\Seen" not in r.flags for r in recs), 0)
    assert box.append(MSG) == 6  # never 5 again
    assert again.mailbox("Work").records([1])[0].flags == ("\\Answered",)
    assert again.subscriptions() >= {"INBOX", "Sent"}
    again.close()


def test_corrupt_index_rebuilt_logged_counted(store: MailStore, root: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = _fill(store, root)
    store.close()
    for suffix in ("-wal", "-shm"):
        Path(str(root / INDEX_FILE) + suffix).unlink(missing_ok=True)
    (root / INDEX_FILE).write_bytes(os.urandom(8192))
    count = REBUILDS.value
    with caplog.at_level(logging.ERROR, "appliance.mailstore.index"):
        again = MailStore.open(root, SPECIALS, "Outbox")
    assert REBUILDS.value == count + 1
    assert any("rebuilding" in r.message for r in caplog.records)
    assert any(n.startswith(INDEX_FILE + ".corrupt-") for n in os.listdir(root))  # kept for a post-mortem
    after = _snapshot(again)
    assert after["inbox"][:3] == before["inbox"][:3] and after["work"] == before["work"]
    again.close()


def _old_store(root: Path) -> tuple[int, list[int]]:
    """A box as the previous store (appliance-uidlist, removed in issue 13) left it, written by hand.

    Layout: Maildir++ folders, standard flags in the ``:2,`` info, keywords and UIDs only in
    ``appliance-uidlist`` ("A1 V<uidvalidity> N<nextuid>", then "<uid> <base> <size> [keyword ...]"),
    and a ``subscriptions`` file of folder names.
    """
    validity = 1_700_000_000
    for folder in ["", *(f".{name}" for name in SPECIALS)]:
        for sub in ("tmp", "new", "cur"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
    body = MSG.replace(b"\n", b"\r\n")
    files = {1: ("1700000001.M1P1Q1.old", "", []), 2: ("1700000002.M2P1Q2.old", "S", ["$Label1", "todo"]),
             4: ("1700000004.M4P1Q4.old", "", ["custom"])}  # uid 3 was expunged
    lines = [f"A1 V{validity} N5"]
    for uid, (base, letters, keywords) in files.items():
        (root / "cur" / f"{base}:2,{letters}").write_bytes(body)
        lines.append(" ".join([str(uid), base, str(len(body)), *keywords]))
    (root / "appliance-uidlist").write_text("\n".join(lines) + "\n")
    (root / "subscriptions").write_text("".join(f"{n}\n" for n in ["INBOX", *SPECIALS] if n != "Junk"))
    return validity, sorted(files)


def test_old_uidlist_store_migrated_once(root: Path) -> None:
    validity, uids = _old_store(root)
    u = 4
    new = MailStore.open(root, SPECIALS, "Outbox")
    box = new.mailbox("INBOX")
    assert box.uidvalidity == validity
    assert list(box.state().uids) == uids == [1, 2, u]
    assert set(box.records([2])[0].flags) == {"\\Seen", "$Label1", "todo"}
    assert box.records([u])[0].flags == ("custom",)
    assert {"$Label1", "todo", "custom"} <= set(box.keywords())
    assert "Junk" not in new.subscriptions() and "Sent" in new.subscriptions()
    assert box.append(MSG) == u + 1
    box.store([1], "add", ["later"])
    new.close()
    # Once: the old list is not read again (a change made since survives a reopen, and a rebuild).
    again = MailStore.open(root, SPECIALS, "Outbox")
    assert again.mailbox("INBOX").records([1])[0].flags == ("later",)
    again.finish_fill()
    again.close()
    assert not (root / PENDING_NAMES).exists()
    assert (root / UID_MAP).exists()  # the old list's UIDs live on in the new one (uidmap.py)
    assert not (root / "appliance-uidlist").exists()
    for suffix in ("", "-wal", "-shm"):
        Path(str(root / INDEX_FILE) + suffix).unlink(missing_ok=True)
    rebuilt = MailStore.open(root, SPECIALS, "Outbox")
    box = rebuilt.mailbox("INBOX")
    assert box.uidvalidity == validity and list(box.state().uids) == [1, 2, u, u + 1]
    assert box.records([2])[0].flags == ("\\Seen",)  # keywords live in the index only now
    rebuilt.close()


def test_folder_made_by_another_tool_is_imported(store: MailStore, root: Path) -> None:
    d = root / ".Imported"
    for sub in ("cur", "new", "tmp"):
        (d / sub).mkdir(parents=True)
    (d / "cur" / "1700000000.x.host:2,S").write_bytes(MSG)
    store.close()
    again = MailStore.open(root)
    box = again.mailbox("Imported")
    assert box.records_range([(1, 5)])[0].flags == ("\\Seen",)
    assert box.read(1) == MSG.replace(b"\n", b"\r\n")
    again.close()


def test_file_committed_but_not_renamed_is_found(store: MailStore, root: Path) -> None:
    """A crash between the index commit and the rename into cur/ loses nothing."""
    box = store.mailbox("INBOX")
    uid = box.append(MSG)
    p = box.path(uid)
    base = p.name.split(",U=")[0]
    os.rename(p, root / "tmp" / base)  # where append() had the file just before its rename
    assert box.read(uid) == MSG.replace(b"\n", b"\r\n")
    assert box.path(uid) == p
    name = deliver(root, MSG)
    box.sync()
    cur_name = next(n for n in os.listdir(root / "cur") if n.startswith(name))
    os.rename(root / "cur" / cur_name, root / "new" / name)  # sync committed, did not rename
    assert box.sync() is False  # not indexed twice
    assert list(box.state().uids) == [uid, uid + 1]
    assert box.read(uid + 1) == MSG.replace(b"\n", b"\r\n")


def test_corruption_found_later_is_refused_cleanly_then_rebuilt(root: Path) -> None:
    from appliance.mailstore import open_store
    from appliance.mailstore.cache import close_all

    s = open_store(root)
    box = s.mailbox("INBOX")
    for _ in range(3000):
        deliver(root, MSG)
    box.sync()
    uidvalidity = box.uidvalidity
    close_all()
    size = (root / INDEX_FILE).stat().st_size
    assert size > 16 * 4096 and not Path(str(root / INDEX_FILE) + "-wal").exists()  # all in the main file
    with open(root / INDEX_FILE, "r+b") as fh:  # damage the middle, keep the header readable
        fh.seek(size // 2)
        fh.write(b"\xff" * (8 * 4096))  # not a valid page type: every read of these pages fails
    count = REBUILDS.value
    s = open_store(root)
    with pytest.raises(MailstoreError) as err:
        for _ in range(3):
            s.mailbox("INBOX").records_range([(1, 3000)])
            s.mailbox("INBOX").state()
    assert err.value.code == "SERVERBUG"
    again = open_store(root)  # the damaged store is replaced, the index rebuilt from the files
    assert again is not s and REBUILDS.value == count + 1
    rebuilt = again.mailbox("INBOX")
    assert rebuilt.uidvalidity == uidvalidity and list(rebuilt.state().uids) == list(range(1, 3001))
    close_all()


def _foreign_maildir(root: Path, count: int) -> list[bytes]:
    """COUNT messages as another server left them in cur/: no ,U= and no ,W= in the names, LF endings."""
    (root / "cur").mkdir(parents=True)
    bodies = []
    for i in range(count):
        body = b"Subject: old %d\n\n%s\n" % (i, b"x" * i)
        (root / "cur" / f"{1_600_000_000 + i}.M{i}P1.oldhost:2,{'S' if i % 2 else ''}").write_bytes(body)
        os.utime(root / "cur" / f"{1_600_000_000 + i}.M{i}P1.oldhost:2,{'S' if i % 2 else ''}",
                 (1_600_000_000 + i, 1_600_000_000 + i))
        bodies.append(body)
    return bodies


def _drop_index(root: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(root / INDEX_FILE) + suffix).unlink(missing_ok=True)


def _uid_of_body(box, count: int) -> dict[bytes, int]:
    return {box.read(uid): uid for uid in box.state().uids[:count]}


def test_foreign_maildir_is_indexed_first_and_filled_later(root: Path) -> None:
    """The first open only lists cur/; sizes and dates come later, never wrong (fill.py); no file
    is renamed, and the UIDs survive a lost index through the folder's UID list (uidmap.py)."""
    bodies = _foreign_maildir(root, 30)
    names = sorted(os.listdir(root / "cur"))
    store = MailStore.open(root, background_fill=False)
    box = store.mailbox("INBOX")
    assert list(box.state().uids) == list(range(1, 31))  # name order is delivery order
    lines = (root / UID_MAP).read_text().splitlines()
    assert lines[0] == f"A2 V{box.uidvalidity}" and len(lines) == 31
    # What a client asks for is completed on demand: right sizes (CRLF) and dates (mtime).
    rec = box.records([7])[0]
    assert rec.size == len(bodies[6].replace(b"\n", b"\r\n")) and rec.internaldate == 1_600_000_006
    assert box.read(7) == bodies[6].replace(b"\n", b"\r\n")
    assert all(r.size > 0 and r.internaldate > 0 for r in box.records_range([(1, 30)]))
    assert store.status("INBOX").size == sum(len(b.replace(b"\n", b"\r\n")) for b in bodies)
    assert sorted(os.listdir(root / "cur")) == names  # the names are the other tools' as they were
    before = _uid_of_body(box, 30)
    validity = box.uidvalidity
    store.close()
    _drop_index(root)
    again = MailStore.open(root, background_fill=False)
    box = again.mailbox("INBOX")
    assert box.uidvalidity == validity and list(box.state().uids) == list(range(1, 31))
    assert _uid_of_body(box, 30) == before  # each message has the UID it had
    assert box.records([30])[0].size == len(bodies[29].replace(b"\n", b"\r\n"))
    again.close()


def test_background_fill_renames_nothing(root: Path) -> None:
    _foreign_maildir(root, 25)
    names = sorted(os.listdir(root / "cur"))
    store = MailStore.open(root)
    store.finish_fill()
    assert sorted(os.listdir(root / "cur")) == names
    assert store.status("INBOX").size > 0
    store.close()


def test_flag_changes_keep_the_stem_the_uid_list_names(root: Path) -> None:
    """A STORE renames the info part only; a new delivery is named with its UID; both survive a rebuild."""
    _foreign_maildir(root, 5)
    store = MailStore.open(root, background_fill=False)
    box = store.mailbox("INBOX")
    box.store([2], "add", ["\\Flagged"])
    deliver(root, MSG)
    box.sync()
    box.expunge([1])
    validity, bodies = box.uidvalidity, _uid_of_body(box, 5)
    store.close()
    assert len((root / UID_MAP).read_text().splitlines()) == 6  # written once, at import
    _drop_index(root)
    again = MailStore.open(root, background_fill=False)
    box = again.mailbox("INBOX")
    assert box.uidvalidity == validity and list(box.state().uids) == [2, 3, 4, 5, 6]
    assert _uid_of_body(box, 5) == bodies
    assert set(box.records([2])[0].flags) == {"\\Seen", "\\Flagged"}  # S from the name, F from the STORE
    again.close()


def test_uid_list_of_another_uidvalidity_is_ignored(root: Path) -> None:
    _foreign_maildir(root, 4)
    store = MailStore.open(root, background_fill=False)
    validity = store.mailbox("INBOX").uidvalidity
    store.close()
    text = (root / UID_MAP).read_text().splitlines()
    (root / UID_MAP).write_text("\n".join([f"A2 V{validity + 5}", "40 " + text[1].split(" ", 1)[1], *text[2:]]) + "\n")
    _drop_index(root)
    again = MailStore.open(root, background_fill=False)
    assert 40 not in again.mailbox("INBOX").state().uids  # the stray list is not believed
    again.close()


def test_index_lost_while_the_old_rename_marker_stood_changes_uidvalidity(root: Path) -> None:
    """A folder left by the version that renamed files (fill.py), marked and without a UID list:
    RFC 3501 §2.3.1.1: UIDs that cannot be recovered MUST show as a new UIDVALIDITY."""
    _foreign_maildir(root, 10)
    store = MailStore.open(root, background_fill=False)
    validity = store.mailbox("INBOX").uidvalidity
    store.close()
    (root / UID_MAP).unlink()
    (root / PENDING_NAMES).write_text("files in cur/ whose UID is in the index only\n")
    _drop_index(root)
    again = MailStore.open(root, background_fill=False)
    assert again.mailbox("INBOX").uidvalidity > validity
    again.close()
    assert not (root / PENDING_NAMES).exists() and (root / UID_MAP).exists()


def test_old_rename_marker_becomes_a_uid_list_when_the_fill_ends(root: Path) -> None:
    _foreign_maildir(root, 6)
    store = MailStore.open(root, background_fill=False)
    box = store.mailbox("INBOX")
    (root / UID_MAP).unlink()
    (root / PENDING_NAMES).write_text("files in cur/ whose UID is in the index only\n")
    box.unfilled = True
    assert all(r.size > 0 for r in box.records_range([(1, 6)]))
    while box.unfilled:
        store.finish_fill()
        box.records_range([(1, 6)])
    validity, bodies = box.uidvalidity, _uid_of_body(box, 6)
    store.close()
    assert not (root / PENDING_NAMES).exists() and (root / UID_MAP).exists()
    _drop_index(root)
    again = MailStore.open(root, background_fill=False)
    box = again.mailbox("INBOX")
    assert box.uidvalidity == validity and _uid_of_body(box, 6) == bodies
    again.close()


def test_fill_renamed_but_lost_its_commit(root: Path) -> None:
    """A crash after a fill batch renamed a file and before its commit: the file is found, not duplicated."""
    bodies = _foreign_maildir(root, 3)
    store = MailStore.open(root, background_fill=False)
    box = store.mailbox("INBOX")
    name = f"{1_600_000_001}.M1P1.oldhost"
    os.rename(root / "cur" / f"{name}:2,S", root / "cur" / f"{name},U=2:2,S")  # the batch's rename only
    assert box.read(2) == bodies[1].replace(b"\n", b"\r\n")
    box.rescan()
    assert list(box.state().uids) == [1, 2, 3]
    assert box.records([2])[0].flags == ("\\Seen",)
    store.close()


def test_import_numbers_claimed_duplicate_and_unnamed_files(root: Path) -> None:
    """A UID in a name is kept; a UID claimed twice stays with one file; the others get UIDs from
    UIDNEXT (above the recorded floor) in name order; flags, counters and sizes come along."""
    (root / "cur").mkdir(parents=True)
    files = {"1600000003.a,U=5,W=10:2,S": b"a\n", "1600000004.b,U=5:2,": b"b\n", "1600000001.c,U=2:2,F": b"c\n",
             "1600000009.d:2,": b"d\n", "1600000000.e:2,T": b"e\n"}
    for name, body in files.items():
        (root / "cur" / name).write_bytes(body)
    (root / "appliance-uidvalidity").write_text("V777 N7\n")
    store = MailStore.open(root, background_fill=False)
    listed = dict(reversed(line.split(" ", 1)) for line in (root / UID_MAP).read_text().splitlines()[1:])
    assert sorted(int(u) for u in listed.values()) == [7, 8, 9]  # the renumbered: in the list, not renamed
    box = store.mailbox("INBOX")
    st = box.state()
    assert box.uidvalidity == 777
    by_uid = {r.uid: r for r in box.records_range([(1, 100)])}
    stems = {uid: stem for uid, stem in _stems(store, box.id)}
    assert stems[2] == "1600000001.c,U=2" and by_uid[2].flags == ("\\Flagged",)
    five = stems[5]
    other = "1600000004.b" if five.startswith("1600000003.a") else "1600000003.a,W=10"
    # Not numbered from the names: the duplicate and the two without one, in name order from UIDNEXT 7.
    unnumbered = sorted(["1600000009.d", "1600000000.e", other])
    assert [without_uid(stems[u]) for u in (7, 8, 9)] == [without_uid(s) for s in unnumbered]
    assert list(st.uids) == [2, 5, 7, 8, 9] and st.uidnext == 10
    status = store.status("INBOX")
    assert (status.messages, status.unseen, status.deleted) == (5, 4 if five.startswith("1600000004") else 3, 1)
    assert all(r.size > 0 for r in box.records_range([(1, 100)]))  # filled on demand, never -1
    assert sorted(os.listdir(root / "cur")) == sorted(files)  # no file renamed
    store.close()
    _drop_index(root)
    again = MailStore.open(root, background_fill=False)
    assert again.mailbox("INBOX").uidvalidity == 777
    assert _stems(again, again.mailbox("INBOX").id) == sorted(stems.items())  # the same UID for each file
    again.close()


def _stems(store: MailStore, mid: int) -> list[tuple[int, str]]:
    with store.index.read() as db:
        return db.execute("SELECT uid, stem FROM messages WHERE mailbox_id = ? ORDER BY uid", (mid,)).fetchall()
