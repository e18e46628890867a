"""Edge role: everything goes to the upstream member relay, AUTH over STARTTLS, the upstream's key pinned.

The upstream is a real relay process (another dev box); the edge box's delivery runs in-process.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance.accounts import AccountStore
from appliance.config import Config
from appliance.registry import model as registry_model
from appliance.spool import Spool
from appliance.tlsfiles import load_cert, spki_sha256
from tests.helpers.box import make_box
from tests.relay_back.conftest import tune
from tests.relay_back.relayproc import RelayProcess, delivered_ids, raise_member_limits

pytestmark = pytest.mark.peers


def edge_box(tmp_path: Path, upstream: Config, pins: list[str]) -> Config:
    b = make_box(tmp_path, domain="edge.test", name="edge")
    pw = tmp_path / "upstream.pw"
    pw.write_text("correct horse battery\n")
    pw.chmod(0o600)
    return tune(b.config_file, box={"role": "edge", "member_id": ""}, relay={
        "retry_initial": 1, "retry_max": 1,
        "upstream": {"host": upstream.listeners.submission.host, "port": upstream.listeners.submission.port,
                     "username": "alice@example.test", "password_file": str(pw), "spki_sha256": pins}})


def run_edge(cfg: Config, until_ok) -> Spool:  # type: ignore[no-untyped-def]
    from appliance.delivery import DeliveryManager

    async def main() -> Spool:
        spool = Spool(Path(cfg.paths.spool_dir))
        spool.recover()
        mgr = DeliveryManager(cfg, spool, lambda: registry_model.load(cfg.registry_dir / "registry.json"))
        task = asyncio.create_task(mgr.run())
        body = (b"From: user@edge.test\r\nTo: bob@example.test\r\nSubject: via upstream\r\n"
                b"Message-ID: <edge-1@edge.test>\r\n\r\nhello\r\n")
        qid = await spool.store("user@edge.test", ["bob@example.test"], body, {})
        try:
            for _ in range(600):
                if until_ok(spool, qid):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"edge delivery did not reach the expected state: {spool.read_log(qid)}")
        finally:
            await mgr.stop()
            await task
            spool.close()
        return spool

    return asyncio.run(main())


def test_edge_sends_through_pinned_authenticated_upstream(devbox: tuple[Path, Config], tmp_path: Path) -> None:
    config_file, upstream = devbox
    raise_member_limits(upstream)
    store = AccountStore(upstream.paths.accounts_db)
    store.add_alias("alice@example.test", "user@edge.test")  # the edge box's customers send as this account
    store.close()
    relay = RelayProcess(config_file, tmp_path / "upstream.log").start(upstream)
    try:
        # A wrong pin: nothing is sent, the message waits (temporary), no plaintext fallback.
        wrong = edge_box(tmp_path / "wrong", upstream, ["0" * 64])
        spool = run_edge(wrong, lambda s, q: any(r.get("attempts", 0) >= 2 for r in s.read_log(q)))
        why = [r for r in spool.read_log(spool.ids()[0]) if "why" in r][-1]["why"]["bob@example.test"]
        assert why.startswith("4.7.5") and "pins" in why
        bob = Path(upstream.paths.mail_dir) / "example.test" / "bob"
        assert "<edge-1@edge.test>" not in delivered_ids(bob)

        pin = spki_sha256(load_cert(upstream.tls.cert))
        good = edge_box(tmp_path / "good", upstream, [pin])
        run_edge(good, lambda s, q: not s.path(q).exists())
        for _ in range(600):
            if "<edge-1@edge.test>" in delivered_ids(bob):
                break
            asyncio.run(asyncio.sleep(0.05))
        assert "<edge-1@edge.test>" in delivered_ids(bob)
        got = next((bob / "new").iterdir()).read_bytes()
        assert b"ESMTPSA" in got  # the upstream recorded an authenticated TLS submission
    finally:
        relay.stop()
