"""Quota usage as local delivery counts it (appliance/delivery/usage.py): read once, then counted.

A mailbox nobody reads over IMAP keeps every delivery in new/; usage must stay exact
without listing new/ for each message, and a session's changes (new/ taken into the
index, EXPUNGE) must be seen at the next delivery.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from appliance.accounts import AccountStore
from appliance.config import Config
from appliance.delivery import DeliveryManager
from appliance.delivery.usage import UsageCache
from appliance.mailstore import MailStore, maildir_path
from appliance.mailstore import quota as mquota
from appliance.mailstore.quota import usage
from appliance.spool import Spool
from tests.helpers.box import make_box
from tests.mailstore.conftest import deliver
from tests.relay_back.conftest import tune
from tests.relay_back.test_delivery import MSG, queue_empty, until, with_relay

BODY = b"Subject: u\n\n" + b"y" * 200 + b"\n"
SIZE = len(BODY) + BODY.count(b"\n")  # with CRLF line ends (RFC 9208 counts those)


def test_cached_usage_follows_deliveries_and_sessions(tmp_path: Path) -> None:
    root = tmp_path / "u"
    for _ in range(50):
        deliver(root, BODY)  # never opened by a session: all 50 wait in new/
    cache = UsageCache(max_age=3600)  # only a visible change may refresh it here
    assert cache.usage(root) == usage(root) == (50 * SIZE, 50)
    # What LocalDelivery does after each file it delivers:
    deliver(root, BODY)
    cache.delivered(root, SIZE)
    assert cache.usage(root) == usage(root) == (51 * SIZE, 51)
    assert cache.stats["reads"] == 1
    # A session takes new/ into its index, appends and expunges: each is seen at the next read.
    store = MailStore.open(root, ["Sent"])
    inbox = store.mailbox("INBOX")
    inbox.sync()
    time.sleep(0.02)  # past the file system's timestamp granularity
    store.mailbox("Sent").append(BODY)
    assert cache.usage(root) == usage(root) == (52 * SIZE, 52)
    time.sleep(0.02)
    inbox.expunge(inbox.state().uids[:10])
    assert cache.usage(root) == usage(root) == (42 * SIZE, 42)
    store.close()


def test_cached_usage_is_refreshed_after_max_age(tmp_path: Path) -> None:
    root = tmp_path / "u"
    deliver(root, BODY)
    cache = UsageCache(max_age=0.1)
    assert cache.usage(root) == (SIZE, 1)
    next(iter((root / "new").iterdir())).unlink()  # removed by hand: no index to tell
    time.sleep(0.15)
    assert cache.usage(root) == (0, 0)


def test_a_read_racing_a_counted_delivery_is_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery counted while the RCPT side is reading: its file may be missing from that read, so the
    read is not cached and the next caller reads again (the figure is never low for MAX_AGE seconds)."""
    root = tmp_path / "u"
    deliver(root, BODY)
    cache = UsageCache(max_age=3600)
    real = mquota.usage
    raced = []

    def usage_with_a_delivery_landing(r: str | Path) -> mquota.QuotaUsage:
        seen = real(r)  # the listing is taken, then the delivery thread finishes a message
        if not raced:
            raced.append(deliver(root, BODY))
            cache.delivered(root, SIZE)
        return seen

    monkeypatch.setattr(mquota, "usage", usage_with_a_delivery_landing)
    assert cache.usage(root) == (SIZE, 1)  # what that read saw
    assert cache.usage(root) == (2 * SIZE, 2)  # read again: not the stale figure
    assert cache.usage(root) == (2 * SIZE, 2) and cache.stats == {"reads": 2, "hits": 1}


@pytest.mark.peers
def test_quota_exact_for_a_mailbox_with_thousands_waiting_in_new(tmp_path: Path) -> None:
    b = make_box(tmp_path)
    cfg: Config = tune(b.config_file, relay={"retry_initial": 60, "retry_max": 60})
    store = AccountStore(cfg.paths.accounts_db)
    store.add("bob@example.test", "correct horse battery")
    store.set_quota("bob@example.test", None, 2010)  # messages
    store.close()
    root = maildir_path(cfg.paths.mail_dir, "bob@example.test")
    for _ in range(2000):
        deliver(root, BODY)

    def in_new() -> int:
        return len(list((root / "new").iterdir()))

    async def body(spool: Spool, mgr: DeliveryManager) -> None:
        # 2000 of 2010 is over 90 %: the 90 % warning comes with the first delivery, then 8 more
        # fill the mailbox (2000 + 9 + the warning); the last 3 stay queued (452 4.2.2, retried later).
        for i in range(12):
            await spool.store("alice@example.test", ["bob@example.test"], MSG, {})
            await until(lambda: queue_empty(spool) or mgr._local.stats["over_quota"] > 0, what=f"message {i}")
        await until(lambda: mgr._local.stats["over_quota"] >= 3, what="the last three refused")
        assert mgr._local._usage.stats["reads"] < 12  # not a listing of 2000 files for every delivery

    with_relay(cfg, body)
    assert in_new() == 2010  # 2000 + 9 messages + the 90 % warning: exactly the quota, nothing more
