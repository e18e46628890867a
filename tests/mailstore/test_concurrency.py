"""Several threads and several store objects on one account at once: nothing lost, nothing doubled."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from appliance.mailstore import MailStore
from tests.mailstore.conftest import SPECIALS, deliver

MSG = b"Subject: c\n\nx\n"


def _run(*fns: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(f,)) for f in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert errors == []


def test_store_and_expunge_in_two_threads(store: MailStore, root: Path) -> None:
    for _ in range(400):
        deliver(root, MSG)
    box = store.mailbox("INBOX")
    box.sync()
    other = MailStore.open(root, SPECIALS, "Outbox").mailbox("INBOX")  # a second session's object

    def flagger() -> None:
        for i in range(1, 401, 4):
            box.store(list(range(i, i + 4)), "add", ["\\Seen", "$Done"])

    def expunger() -> None:
        for i in range(2, 401, 10):
            other.store([i], "add", ["\\Deleted"])
            other.expunge([i])

    _run(flagger, expunger)
    gone = set(range(2, 401, 10))
    st = box.state()
    assert set(st.uids) == set(range(1, 401)) - gone
    assert all(set(r.flags) == {"\\Seen", "$Done"} for r in box.records(list(st.uids)))
    assert len(os.listdir(root / "cur")) == len(st.uids)
    assert all(n.endswith(":2,S") for n in os.listdir(root / "cur"))  # every rename happened
    status = store.status("INBOX")  # the maintained counters agree with the rows
    assert (status.messages, status.unseen, status.deleted) == (len(st.uids), 0, 0)
    other._store.close()


def test_concurrent_sync_append_keep_uids_unique_and_ascending(store: MailStore, root: Path) -> None:
    box = store.mailbox("INBOX")
    other = MailStore.open(root, SPECIALS, "Outbox").mailbox("INBOX")
    got: list[int] = []

    def appender() -> None:
        for _ in range(60):
            got.append(box.append(MSG))

    def deliverer() -> None:
        for _ in range(60):
            deliver(root, MSG)
            other.sync()

    def syncer() -> None:
        for _ in range(60):
            box.sync()

    _run(appender, deliverer, syncer)
    box.sync()
    uids = list(box.state().uids)
    assert len(uids) == 120 == len(set(uids)) and uids == sorted(uids)
    assert got == sorted(got)
    assert len(os.listdir(root / "cur")) == 120 and os.listdir(root / "new") == []
    assert all(box.read(u) == MSG.replace(b"\n", b"\r\n") for u in uids)
    other._store.close()
