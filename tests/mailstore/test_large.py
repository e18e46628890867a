"""A 100,000-message INBOX: built from new/ in one sync, then the operations clients run on it.

Correctness only (no timing asserts); speed is measured by bench/imap against Dovecot.
"""

from __future__ import annotations

import os
from pathlib import Path

from appliance.mailstore import MailStore
from appliance.mailstore.maildir import crlf_size

N = 100_000
MSG = b"From: a@example.test\nSubject: message\n\nbody\n"


def test_100k_folder(store: MailStore, root: Path) -> None:
    w = crlf_size(MSG)
    new = root / "new"
    for i in range(N):
        with open(new / f"1700000000.M{i}P1Q{i}.host,W={w}", "wb") as fh:
            fh.write(MSG)
    box = store.mailbox("INBOX")
    assert box.sync() is True
    st = box.state()
    assert st.exists == N and len(st.uids) == N and st.uids[0] == 1 and st.uids[-1] == N
    assert os.listdir(new) == []
    # Mark a third \Seen, then count unseen by the index.
    box.store(list(range(1, N + 1, 3)), "add", ["\\Seen"])
    assert store.status("INBOX").unseen == N - len(range(1, N + 1, 3))
    assert box.unseen_first() == 2
    # "Mark as junk" on 1,000 messages: one STORE, keywords only.
    before = box.state().highestmodseq
    res = box.store(list(range(5000, 6000)), "add", ["$Label1"])
    assert len(res.changed) == 1000 and {r.modseq for r in res.changed} == {before + 1}  # one transaction
    assert box.state().highestmodseq == before + 1
    changed, gone = box.changes_since(before)
    assert [r.uid for r in changed] == list(range(5000, 6000)) and gone == []
    recs = box.records_range([(1, N)])
    assert len(recs) == N and sum(1 for r in recs if "$Label1" in r.flags) == 1000
    assert box.read(N) == MSG.replace(b"\n", b"\r\n")
    # COPY of 500 and an expunge in the middle.
    store.create("Copies")
    pairs = box.copy_to(list(range(100, 600)), store.mailbox("Copies"))
    assert len(pairs) == 500 and pairs[0] == (100, 1)
    box.store(list(range(10, 20)), "add", ["\\Deleted"])
    assert box.expunge() == list(range(10, 20))
    assert box.state().exists == N - 10
    assert store.usage() == (w * (N - 10 + 500), N - 10 + 500)
