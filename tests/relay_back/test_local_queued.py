"""A queued message delivered whole by the local delivery thread (LocalDelivery.deliver_queued).

It reads the message from the spool, delivers it and removes it once every recipient is
delivered; what it cannot deliver stays queued, and a file damaged in the queue is refused
(the manager quarantines it), never delivered.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance.accounts import AccountStore
from appliance.config import Config
from appliance.delivery.local import LocalDelivery
from appliance.spool import Spool
from appliance.spool.format import SpoolFormatError
from tests.helpers.box import make_box
from tests.relay_back.test_delivery import MSG, maildir_new

pytestmark = pytest.mark.peers


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    b = make_box(tmp_path)
    store = AccountStore(b.cfg.paths.accounts_db)
    store.add("alice@example.test", "correct horse battery")
    store.close()
    return b.cfg


def test_delivered_then_removed_unknown_kept_damaged_refused(cfg: Config) -> None:
    spool = Spool(Path(cfg.paths.spool_dir))
    spool.recover()
    local = LocalDelivery(cfg.paths.mail_dir, cfg.paths.accounts_db)

    async def main() -> None:
        ok = await spool.store("bob@isp-x.test", ["alice@example.test"], MSG, {})
        mixed = await spool.store("bob@isp-x.test", ["alice@example.test", "nobody@example.test"], MSG, {})
        damaged = await spool.store("bob@isp-x.test", ["alice@example.test"], MSG, {})
        raw = bytearray(spool.path(damaged).read_bytes())
        raw[-3] ^= 1
        spool.path(damaged).write_bytes(bytes(raw))

        done = await local.deliver_queued(spool, ok, ["alice@example.test"])
        assert done.finished and [o.status for o in done.outcomes] == ["delivered"]
        assert not spool.path(ok).exists()

        done = await local.deliver_queued(spool, mixed, ["alice@example.test", "nobody@example.test"])
        assert not done.finished and done.msg is not None and done.msg.id == mixed
        assert sorted(o.status for o in done.outcomes) == ["delivered", "failed"]
        assert spool.path(mixed).exists()  # the manager logs the outcomes and sends the DSN

        with pytest.raises(SpoolFormatError):
            await local.deliver_queued(spool, damaged, ["alice@example.test"])
        assert spool.path(damaged).exists()

        # Many at once: one batch or a few, every one delivered and removed.
        ids = [await spool.store("bob@isp-x.test", ["alice@example.test"], MSG, {}) for _ in range(20)]
        results = await asyncio.gather(*(local.deliver_queued(spool, q, ["alice@example.test"]) for q in ids))
        assert all(r.finished for r in results) and not any(spool.path(q).exists() for q in ids)
        assert local.stats["batches"] <= 3 + 10  # 3 above, then the 20 share batches

    try:
        asyncio.run(main())
    finally:
        local.close()
        spool.close()
    assert len(maildir_new(cfg, "alice@example.test")) == 1 + 1 + 20

