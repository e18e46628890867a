"""The relay's local delivery and quotas: over quota stays queued, DSN after the lifetime, 90 % warning once."""

from __future__ import annotations

import email
from pathlib import Path

import pytest

from appliance.accounts import AccountStore
from appliance.config import Config
from appliance.delivery import DeliveryManager
from appliance.mailstore import MailStore, maildir_path
from appliance.spool import Spool
from tests.helpers.box import make_box
from tests.relay_back.conftest import tune
from tests.relay_back.test_delivery import MSG, queue_empty, until, with_relay

pytestmark = pytest.mark.peers


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    """A development box's config with fast retries and the accounts alice and bob (not started)."""
    b = make_box(tmp_path)
    cfg = tune(b.config_file, relay={"retry_initial": 1, "retry_max": 2})
    store = AccountStore(cfg.paths.accounts_db)
    store.add("alice@example.test", "correct horse battery")
    store.add("bob@example.test", "correct horse battery")
    store.close()
    return cfg


def _new(cfg: Config, address: str) -> list[Path]:
    d = maildir_path(cfg.paths.mail_dir, address) / "new"
    return sorted(d.iterdir()) if d.exists() else []


def _set_quota(cfg: Config, address: str, storage: int | None, messages: int | None) -> None:
    store = AccountStore(cfg.paths.accounts_db)
    store.set_quota(address, storage, messages)
    store.close()


def _subjects(paths: list[Path]) -> list[str]:
    return [str(email.message_from_bytes(p.read_bytes())["Subject"]) for p in paths]


def test_warning_at_90_percent_once_then_deferred_not_lost(cfg: Config) -> None:
    _set_quota(cfg, "bob@example.test", None, 12)

    async def fill(spool: Spool, mgr: DeliveryManager) -> None:
        for _ in range(10):
            await spool.store("alice@example.test", ["bob@example.test"], MSG, {})
        # 10 of 12 messages is 83 %; the 11th crosses 90 %: the warning comes with it (12 files).
        await until(lambda: queue_empty(spool) and len(_new(cfg, "bob@example.test")) == 10, what="10 deliveries")
        await spool.store("alice@example.test", ["bob@example.test"], MSG, {})
        await until(lambda: queue_empty(spool) and len(_new(cfg, "bob@example.test")) == 12, what="11th + warning")
        # Now full (11 messages + the warning): the next one waits in the queue, nothing is dropped.
        await spool.store("alice@example.test", ["bob@example.test"], MSG, {})
        await until(lambda: mgr._local.stats["over_quota"] >= 2, what="two refused attempts")
        assert not queue_empty(spool)

    with_relay(cfg, fill)
    subjects = _subjects(_new(cfg, "bob@example.test"))
    assert subjects.count("Your mailbox is almost full") == 1 and subjects.count("hello") == 11

    # The user makes room (IMAP EXPUNGE through the store): the queued message arrives, and the
    # warning is not repeated while usage stays above 90 %.
    box = MailStore.open(maildir_path(cfg.paths.mail_dir, "bob@example.test")).mailbox("INBOX")
    box.sync()
    box.expunge([1])

    async def drain(spool: Spool, mgr: DeliveryManager) -> None:
        await until(lambda: queue_empty(spool), what="the queued message delivered after room was made")

    with_relay(cfg, drain)
    box.sync()
    assert box.state().exists == 12
    assert _subjects([box.path(u) for u in box.state().uids]).count("Your mailbox is almost full") == 1
    box._store.close()


def test_over_quota_until_lifetime_then_dsn(cfg: Config) -> None:
    cfg = tune(Path(cfg.source), relay={"max_lifetime": 3, "delay_warning": 1})
    _set_quota(cfg, "bob@example.test", 10, None)  # 10 bytes: nothing fits

    async def body(spool: Spool, mgr: DeliveryManager) -> None:
        await spool.store("alice@example.test", ["bob@example.test"], MSG, {})
        await until(lambda: queue_empty(spool) and len(_new(cfg, "alice@example.test")) >= 1, timeout=60,
                    what="failure DSN after the lifetime")

    with_relay(cfg, body)
    assert _new(cfg, "bob@example.test") == []
    dsns = [email.message_from_bytes(p.read_bytes()) for p in _new(cfg, "alice@example.test")]
    statuses = [b["Status"] for d in dsns for b in d.get_payload()[1].get_payload()[1:]]
    assert "4.2.2" in statuses  # RFC 3463: mailbox full, reported to the sender, never silently dropped


def test_parallel_delivery_threads_never_overfill_a_mailbox(cfg: Config) -> None:
    """50 messages at once through up to relay.delivery_workers (20) delivery threads into a mailbox with
    room for 30: the threads reserve quota room across each other, so at most 30 arrive (the 90 % warning
    may take one of them, docs/spool.md "Known gaps"); the rest stay queued, none lost or doubled."""
    _set_quota(cfg, "bob@example.test", None, 30)

    async def burst(spool: Spool, mgr: DeliveryManager) -> None:
        import asyncio

        await asyncio.gather(*(spool.store("alice@example.test", ["bob@example.test"], MSG, {}) for _ in range(50)))
        await until(lambda: mgr._local.stats["over_quota"] >= 20, what="the 20 that do not fit refused")
        assert len(mgr._local._threads) > 1  # the deliveries did run in parallel threads
        hello = _subjects(_new(cfg, "bob@example.test")).count("hello")
        assert len(spool.ids()) == 50 - hello  # the others wait in the queue

    with_relay(cfg, burst)
    files = _new(cfg, "bob@example.test")
    subjects = _subjects(files)
    assert subjects.count("hello") <= 30 and len(files) <= 31
    assert subjects.count("Your mailbox is almost full") == 1
