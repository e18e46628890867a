"""The store API (CONTRACTS.md "B: store API"), method by method, against real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.mailstore import MailStore, MailstoreError, QuotaLimits
from appliance.mailstore.index import INDEX_FILE
from tests.mailstore.conftest import SPECIALS, deliver

MSG = b"From: a@example.test\nSubject: t\n\nline one\nline two\n"


def test_open_creates_inbox_specials_outbox_subscribed(store: MailStore, root: Path) -> None:
    assert store.names() == ["INBOX", "Drafts", "Junk", "Outbox", "Sent", "Trash"]
    assert store.subscriptions() == {"INBOX", *SPECIALS, "Outbox"}
    for name in SPECIALS:
        assert (root / f".{name}" / "cur").is_dir()
    assert store.special_use("Sent") == "\\Sent"
    assert store.attributes("Trash") == ["\\HasNoChildren", "\\Trash"]
    assert (root / INDEX_FILE).exists()


def test_unsubscribe_survives_reopen(store: MailStore, root: Path) -> None:
    store.subscribe("Junk", False)
    store.close()
    again = MailStore.open(root, SPECIALS, "Outbox")
    assert "Junk" not in again.subscriptions()
    again.close()


def test_sync_reads_new_assigns_uids_and_moves_to_cur(store: MailStore, root: Path) -> None:
    box = store.mailbox("INBOX")
    assert box.sync() is False
    names = [deliver(root, MSG), deliver(root, MSG, vsize=False)]
    assert box.sync() is True
    st = box.state()
    assert list(st.uids) == [1, 2] and st.exists == 2 and st.uidnext == 3
    assert os.listdir(root / "new") == []
    cur = sorted(os.listdir(root / "cur"))
    assert sorted(n.split(",U=")[0] for n in cur) == sorted(names)
    assert all(",U=" in n and n.endswith(":2,") for n in cur)
    recs = box.records([1, 2])
    assert [r.size for r in recs] == [len(MSG) + MSG.count(b"\n")] * 2  # CRLF octets, with and without W=
    assert box.read(1) == MSG.replace(b"\n", b"\r\n")


def test_store_flags_and_keywords(store: MailStore, root: Path) -> None:
    box = store.mailbox("INBOX")
    deliver(root, MSG)
    deliver(root, MSG)
    box.sync()
    hms = box.state().highestmodseq
    res = box.store([1, 2, 99], "add", ["\\Seen", "$Label1"])
    assert [r.uid for r in res.changed] == [1, 2] and res.failed == []
    assert all(set(r.flags) == {"\\Seen", "$Label1"} and r.modseq > hms for r in res.changed)
    assert sorted(os.listdir(root / "cur"))[0].endswith(":2,S")  # other Maildir tools see \Seen
    assert box.keywords() == ["$Label1"]
    # Keyword-only change: the file name does not change.
    before = sorted(os.listdir(root / "cur"))
    box.store([1], "remove", ["$Label1"])
    assert sorted(os.listdir(root / "cur")) == before
    assert box.records([1])[0].flags == ("\\Seen",)
    assert box.keywords() == ["$Label1"]  # defined keywords stay (RFC 3501 §7.2.6 FLAGS)
    box.store([2], "set", ["\\flagged"])  # system flags are case-insensitive
    assert box.records([2])[0].flags == ("\\Flagged",)
    assert box.unseen_first() == 2
    # No change, no new MODSEQ.
    hms = box.state().highestmodseq
    assert box.store([2], "add", ["\\Flagged"]).changed == []
    assert box.state().highestmodseq == hms


def test_unchangedsince(store: MailStore, root: Path) -> None:
    box = store.mailbox("INBOX")
    deliver(root, MSG)
    deliver(root, MSG)
    box.sync()
    old = box.state().highestmodseq
    box.store([1], "add", ["\\Seen"])
    res = box.store([1, 2], "add", ["\\Flagged"], unchangedsince=old)
    assert res.failed == [1] and [r.uid for r in res.changed] == [2]  # RFC 7162 §3.1.3


def test_modseq_strictly_increasing_and_changes_since(store: MailStore, root: Path) -> None:
    box = store.mailbox("INBOX")
    seen = [box.state().highestmodseq]
    deliver(root, MSG)
    box.sync()
    seen.append(box.state().highestmodseq)
    uid = box.append(MSG)
    seen.append(box.state().highestmodseq)
    box.store([1], "add", ["\\Deleted"])
    seen.append(box.state().highestmodseq)
    mark = seen[-1]
    box.store([uid], "add", ["x"])
    box.expunge()
    seen.append(box.state().highestmodseq)
    assert seen == sorted(set(seen))
    changed, gone = box.changes_since(mark)
    assert [r.uid for r in changed] == [uid] and gone == [1]
    assert box.changes_since(box.state().highestmodseq) == ([], [])


def test_append_is_durable_and_keeps_flags_date(store: MailStore, root: Path) -> None:
    box = store.mailbox("Drafts")
    uid = box.append(b"Subject: d\r\n\r\nx\r\n", ["\\Draft", "work"], internaldate=1_000_000_000.0)
    rec = box.records([uid])[0]
    assert rec.flags == ("\\Draft", "work") and rec.internaldate == 1_000_000_000.0 and rec.size == 17
    p = box.path(uid)
    assert p.parent == root / ".Drafts" / "cur" and p.name.endswith(f",U={uid}:2,D")
    assert os.stat(p).st_mtime == 1_000_000_000.0
    assert os.listdir(root / ".Drafts" / "tmp") == []
    assert box.size_of(uid) == 17


def test_copy_links_and_move_expunges(store: MailStore, root: Path) -> None:
    inbox, trash = store.mailbox("INBOX"), store.mailbox("Trash")
    for _ in range(3):
        deliver(root, MSG)
    inbox.sync()
    inbox.store([2], "add", ["\\Flagged", "kw"])
    pairs = inbox.copy_to([2, 3, 77], trash)
    assert pairs == [(2, 1), (3, 2)]
    assert os.stat(trash.path(1)).st_ino == os.stat(inbox.path(2)).st_ino  # link(), not a copy
    assert set(trash.records([1])[0].flags) == {"\\Flagged", "kw"}
    assert trash.records([1])[0].internaldate == inbox.records([2])[0].internaldate
    assert trash.keywords() == ["kw"]
    moved = inbox.move_to([1], trash)
    assert moved == [(1, 3)]
    assert list(inbox.state().uids) == [2, 3] and list(trash.state().uids) == [1, 2, 3]
    assert inbox.changes_since(0)[1] == [1]
    assert trash.read(3) == MSG.replace(b"\n", b"\r\n")


def test_expunge_only_deleted_or_given(store: MailStore, root: Path) -> None:
    box = store.mailbox("INBOX")
    for _ in range(4):
        deliver(root, MSG)
    box.sync()
    box.store([1, 3], "add", ["\\Deleted"])
    assert box.expunge() == [1, 3]
    assert box.expunge([4, 99]) == [4]
    assert list(box.state().uids) == [2]
    assert len(os.listdir(root / "cur")) == 1
    with pytest.raises(MailstoreError) as err:
        box.read(1)
    assert err.value.code == "EXPUNGEISSUED"


def test_uids_never_reused_after_expunge_and_reopen(store: MailStore, root: Path) -> None:
    box = store.mailbox("INBOX")
    uid = box.append(MSG)
    box.expunge([uid])
    store.close()
    again = MailStore.open(root, SPECIALS, "Outbox").mailbox("INBOX")
    assert again.append(MSG) == uid + 1


def test_claim_recent_only_once(store: MailStore, root: Path) -> None:
    box = store.mailbox("INBOX")
    deliver(root, MSG)
    box.sync()
    other = MailStore.open(root, SPECIALS, "Outbox").mailbox("INBOX")
    assert box.claim_recent() == [1]
    assert other.claim_recent() == []  # RFC 3501 §2.3.2: one session
    deliver(root, MSG)
    assert store.status("INBOX").recent == 1  # not claimed by any session yet
    other.sync()
    assert other.claim_recent() == [2] and box.claim_recent() == []
    assert store.status("INBOX").recent == 0  # as in Dovecot: claimed ones are that session's
    other._store.close()


def test_status_counts(store: MailStore, root: Path) -> None:
    for _ in range(3):
        deliver(root, MSG)
    box = store.mailbox("INBOX")
    box.sync()
    box.store([1], "add", ["\\Seen"])
    box.store([2], "add", ["\\Deleted", "\\Seen"])
    deliver(root, MSG)  # STATUS picks up what was delivered meanwhile
    st = store.status("INBOX")
    assert (st.messages, st.unseen, st.deleted, st.uidnext) == (4, 2, 1, 5)
    assert st.size == 4 * (len(MSG) + MSG.count(b"\n"))
    assert st.uidvalidity == box.uidvalidity and st.highestmodseq == box.state().highestmodseq


def test_cache(store: MailStore, root: Path) -> None:
    box = store.mailbox("INBOX")
    uid = box.append(MSG)
    assert box.cache_get(uid, "envelope") is None
    box.cache_put(uid, "envelope", b"(NIL)")
    assert box.cache_get(uid, "envelope") == b"(NIL)"
    box.expunge([uid])
    box.cache_put(uid, "envelope", b"(NIL)")  # an expunged message gets no cache row
    assert box.cache_get(uid, "envelope") is None


def test_cache_batches(store: MailStore, root: Path) -> None:
    # A FETCH batch reads and writes its cache rows in one transaction each; rows of a message
    # expunged meanwhile are dropped, the others kept.
    box = store.mailbox("INBOX")
    a, b, c = (box.append(MSG) for _ in range(3))
    box.expunge([b])
    box.cache_put_many([(a, "envelope", b"(A)"), (b, "envelope", b"(B)"), (c, "body", b"(C)")])
    assert box.cache_get_many([a, b, c], "envelope") == {a: b"(A)"}
    assert box.cache_get_many([a, b, c], "body") == {c: b"(C)"}
    store.close()
    reopened = MailStore.open(root, background_fill=False)  # the non-durable commit is still a commit
    try:
        assert reopened.mailbox("INBOX").cache_get(a, "envelope") == b"(A)"
    finally:
        reopened.close()


def test_create_delete_rename_hierarchy(store: MailStore, root: Path) -> None:
    store.create("Lists.")
    store.create("Lists.Work")
    store.create("Lists.Work.Old")
    assert store.attributes("Lists") == ["\\HasChildren"]
    with pytest.raises(MailstoreError) as err:
        store.create("Lists.Work")
    assert err.value.code == "ALREADYEXISTS"
    work = store.mailbox("Lists.Work")
    uid = work.append(MSG)
    validity = work.uidvalidity
    store.rename("Lists", "Archive2024")
    assert store.names() == ["INBOX", "Archive2024", "Archive2024.Work", "Archive2024.Work.Old", "Drafts", "Junk",
                             "Outbox", "Sent", "Trash"]
    moved = store.mailbox("Archive2024.Work")
    assert moved.uidvalidity == validity and moved.read(uid) == MSG.replace(b"\n", b"\r\n")
    assert work.read(uid) == MSG.replace(b"\n", b"\r\n")  # an open Mailbox follows its rename
    store.subscribe("Archive2024.Work")
    store.delete("Archive2024.Work")
    assert not store.exists("Archive2024.Work")
    assert "Archive2024.Work" in store.subscriptions()  # RFC 3501 §6.3.9: not removed unilaterally
    with pytest.raises(MailstoreError) as err:
        store.mailbox("Archive2024.Work")
    assert err.value.code == "NONEXISTENT"
    store.create("Archive2024.Work")
    assert store.mailbox("Archive2024.Work").uidvalidity > validity  # RFC 3501 §2.3.1.1
    with pytest.raises(MailstoreError):
        store.delete("INBOX")


def test_rename_inbox_moves_messages(store: MailStore, root: Path) -> None:
    deliver(root, MSG)
    store.mailbox("INBOX").sync()
    store.rename("INBOX", "Old")
    assert store.mailbox("INBOX").state().exists == 0
    assert store.mailbox("Old").state().exists == 1


def test_names_any_unicode_and_atom_characters(store: MailStore, root: Path) -> None:
    names = ["#news", "a&b", "Hello!", "c++", "~user", "Entwürfe", "日本語", "a/b", "..x", "x.y"]
    made = []
    for n in names:
        try:
            store.create(n)
            made.append(n)
        except MailstoreError as exc:
            assert n == "..x" and exc.code == "CANNOT"  # empty hierarchy level
    for n in made:
        assert store.exists(n)
        assert store.mailbox(n).append(MSG) == 1
    entries = os.listdir(root)
    assert all("/" not in e for e in entries)
    assert all(e.isascii() for e in entries)
    store.close()
    again = MailStore.open(root)
    assert set(made) <= set(again.names())
    again.close()
    for bad in ["", "a..", "a..b", ".a", "a*", "b%", "x\x00y", "tab\there"]:
        with pytest.raises(MailstoreError):
            store.create(bad)


def test_inbox_case_insensitive(store: MailStore) -> None:
    assert store.mailbox("inbox").name == "INBOX"
    store.create("inbox.Child")
    assert "INBOX.Child" in store.names()


def test_quota_on_append_and_copy(root: Path) -> None:
    s = MailStore.open(root, quota=QuotaLimits(storage=1000, messages=3))
    box = s.mailbox("INBOX")
    box.append(b"x" * 400)
    box.append(b"x" * 400)
    with pytest.raises(MailstoreError) as err:
        box.append(b"x" * 400)
    assert err.value.code == "OVERQUOTA"
    s.create("B")
    with pytest.raises(MailstoreError) as err:
        box.copy_to([1, 2], s.mailbox("B"))
    assert err.value.code == "OVERQUOTA"
    assert s.mailbox("B").state().exists == 0  # nothing half-copied
    box.append(b"small")
    with pytest.raises(MailstoreError) as err:
        box.append(b"small")  # MESSAGE resource
    assert err.value.code == "OVERQUOTA"
    assert s.usage() == (805, 3)
    s.close()


def test_external_flag_change_picked_up_by_rescan(store: MailStore, root: Path) -> None:
    box = store.mailbox("INBOX")
    deliver(root, MSG)
    box.sync()
    name = os.listdir(root / "cur")[0]
    os.rename(root / "cur" / name, root / "cur" / (name + "S"))  # a Maildir client marked it read
    assert box.read(1) == MSG.replace(b"\n", b"\r\n")  # still found
    box.rescan()
    assert box.records([1])[0].flags == ("\\Seen",)
    os.unlink(root / "cur" / (name + "S"))
    box.rescan()
    assert box.state().exists == 0 and box.changes_since(0)[1] == [1]


def test_warm_state_follows_changes_made_elsewhere(store: MailStore, root: Path) -> None:
    box = store.mailbox("INBOX")
    other = MailStore.open(root)
    elsewhere = other.mailbox("INBOX")
    for _ in range(20):
        deliver(root, MSG)
    box.sync()
    assert list(box.state().uids) == list(range(1, 21))
    steps = [lambda: elsewhere.expunge([3, 7]), lambda: elsewhere.append(MSG), lambda: (deliver(root, MSG), box.sync()),
             lambda: elsewhere.store([1], "add", ["\\Seen"]), lambda: elsewhere.expunge([22, 21])]
    for step in steps:
        step()
        fresh = MailStore.open(root)
        assert box.state() == fresh.mailbox("INBOX").state()
        fresh.close()
    assert list(box.state().uids) == [u for u in range(1, 21) if u not in (3, 7)]
    other.close()


def test_uids_with_and_counters_after_every_kind_of_change(store: MailStore, root: Path) -> None:
    box = store.mailbox("INBOX")
    for _ in range(6):
        deliver(root, MSG)
    box.sync()
    box.append(MSG, ["\\Seen", "\\Deleted"])
    box.store([1, 2], "add", ["\\Seen"])
    box.store([2, 3], "add", ["\\Deleted", "\\Flagged"])
    box.store([3], "remove", ["\\Deleted"])
    assert list(box.uids_with(absent=["\\Seen"])) == [3, 4, 5, 6]
    assert list(box.uids_with(present=["\\Deleted"])) == [2, 7]
    assert list(box.uids_with(present=["\\Seen", "\\Deleted"])) == [2, 7]

    def check() -> None:
        recs = box.records_range([(1, 100)])
        st = store.status("INBOX")
        assert st.unseen == sum("\\Seen" not in r.flags for r in recs) == box.unseen_count()
        assert st.deleted == sum("\\Deleted" in r.flags for r in recs)
        assert st.messages == len(recs)

    check()
    box.copy_to([2, 3], box)  # COPY into the same mailbox
    check()
    box.expunge()
    check()
    name = next(n for n in os.listdir(root / "cur") if ",U=4:" in n)
    os.rename(root / "cur" / name, root / "cur" / (name + "S"))
    box.rescan()
    check()
    assert box.uids_with(absent=["\\Seen"]).tolist() == [3, 5, 6, 9]
    # The text form answers the same UIDs, ascending; UPTO bounds them (a session's view).
    assert box.uid_text_with(absent=["\\Seen"]) == b"3 5 6 9"
    assert box.uid_text_with(absent=["\\Seen"], upto=6) == b"3 5 6"
    assert box.uids_with(absent=["\\Seen"], upto=6).tolist() == [3, 5, 6]
    assert box.uid_text_with(absent=["\\Seen"], upto=2) == b""
    assert box.uid_text_with(present=["\\Seen"], absent=["\\Deleted"]).decode().split() == \
        [str(u) for u in box.uids_with(present=["\\Seen"], absent=["\\Deleted"])]


def test_unseen_search_uses_the_unseen_index_and_follows_flag_changes(store: MailStore, root: Path) -> None:
    box = store.mailbox("INBOX")
    for _ in range(300):
        deliver(root, MSG)
    box.sync()
    box.store(range(1, 301, 2), "add", ["\\Seen"])  # odd UIDs read
    with store.index.read() as db:
        plan = " ".join(r[-1] for r in db.execute(
            "EXPLAIN QUERY PLAN SELECT uid FROM messages WHERE " + box._flag_filter((), ["\\Seen"], None)[0],
            box._flag_filter((), ["\\Seen"], None)[1]))
    assert "COVERING INDEX messages_unseen_uids" in plan
    assert box.uid_text_with(absent=["\\Seen"]) == " ".join(str(u) for u in range(2, 301, 2)).encode()
    box.store([2, 4], "add", ["\\Seen"])
    box.store([1], "remove", ["\\Seen"])
    box.expunge([6])
    assert box.uids_with(absent=["\\Seen"]).tolist() == [1, *range(8, 301, 2)]
    assert box.unseen_first() == 1


def test_append_and_copy_into_a_deleted_mailbox_are_refused(store: MailStore, root: Path) -> None:
    store.create("Gone")
    gone = store.mailbox("Gone")
    inbox = store.mailbox("INBOX")
    uid = inbox.append(MSG)
    store.delete("Gone")
    with pytest.raises(MailstoreError) as err:
        gone.append(MSG)
    assert err.value.code == "NONEXISTENT"
    with pytest.raises(MailstoreError) as err:
        inbox.copy_to([uid], gone)
    assert err.value.code == "TRYCREATE"
    assert inbox.state().exists == 1
