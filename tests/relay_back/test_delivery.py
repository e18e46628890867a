"""Delivery workers in-process against real peers: Maildir, smtp-sink as next hop (4xx/5xx injection), DSNs."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.config import Config
from appliance.delivery import DeliveryManager, Destination
from appliance.registry import model as registry_model
from appliance.spool import Spool
from tests.relay_back.conftest import tune, write_registry
from tests.relay_back.peers import DnsServer, SmtpSink, require_peers

MSG = b"From: alice@example.test\r\nTo: someone\r\nSubject: hello\r\nMessage-ID: <m1@example.test>\r\n\r\nHi there.\r\n"
pytestmark = pytest.mark.peers


def maildir_new(cfg: Config, address: str) -> list[Path]:
    local, domain = address.split("@")
    d = Path(cfg.paths.mail_dir) / domain / local / "new"
    return sorted(d.iterdir()) if d.exists() else []


async def until(pred: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def with_relay(cfg: Config, body: Callable[[Spool, DeliveryManager], Awaitable[None]], **kw: Any) -> None:
    """Run a DeliveryManager over CFG's spool while BODY runs, then stop it."""

    async def main() -> None:
        spool = Spool(Path(cfg.paths.spool_dir))
        spool.recover()
        mgr = DeliveryManager(cfg, spool, lambda: registry_model.load(cfg.registry_dir / "registry.json"), **kw)
        task = asyncio.create_task(mgr.run())
        try:
            await body(spool, mgr)
        finally:
            await mgr.stop()
            await task
            spool.close()

    asyncio.run(asyncio.wait_for(main(), 120))


def queue_empty(spool: Spool) -> bool:
    return not any(spool.queue_dir.iterdir())


def parse_dsn(path: Path) -> tuple[email.message.Message, list[email.message.Message]]:
    msg = email.message_from_bytes(path.read_bytes())
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    blocks = parts[1].get_payload()  # RFC 3464: per-message block, then one per recipient
    return msg, blocks


def test_local_delivery_and_unknown_user_dsn(devbox: tuple[Path, Config]) -> None:
    _, cfg = devbox

    async def body(spool: Spool, mgr: DeliveryManager) -> None:
        await spool.store("alice@example.test", ["bob@example.test", "nobody@example.test"], MSG, {})
        await until(lambda: queue_empty(spool) and maildir_new(cfg, "alice@example.test"), what="delivery + DSN")

    with_relay(cfg, body)
    [delivered] = maildir_new(cfg, "bob@example.test")
    text = delivered.read_bytes()
    assert text.startswith(b"Return-Path: <alice@example.test>\nDelivered-To: bob@example.test\n")
    assert b"Subject: hello\nMessage-ID: <m1@example.test>\n\nHi there.\n" in text
    [dsn_file] = maildir_new(cfg, "alice@example.test")
    # The DSN comes from the null sender, so it can never bounce back.
    assert dsn_file.read_bytes().startswith(b"Return-Path: <>\n")
    msg, blocks = parse_dsn(dsn_file)
    assert msg["To"] == "<alice@example.test>" and msg["Auto-Submitted"] == "auto-replied"
    assert blocks[0]["Reporting-MTA"] == f"dns; {cfg.box.hostname}"
    assert blocks[1]["Final-Recipient"] == "rfc822; nobody@example.test"
    assert blocks[1]["Action"] == "failed" and blocks[1]["Status"] == "5.1.1"
    assert "Subject: hello" in msg.get_payload()[2].get_payload()


@pytest.fixture
def mx_world(devbox: tuple[Path, Config], tmp_path: Path):  # type: ignore[no-untyped-def]
    require_peers("smtp-sink")
    config_file, _ = devbox
    cfg = tune(config_file, relay={"outside": "mx", "retry_initial": 1, "retry_max": 1})
    dns_server = DnsServer({"remote.test": [(10, "mx.remote.test")]}, {"mx.remote.test": "127.0.0.1"})
    sinks: list[SmtpSink] = []
    yield cfg, dns_server, sinks
    for s in sinks:
        s.stop()
    dns_server.stop()


def test_mx_delivery_retries_4xx_then_delivers(mx_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, dns_server, sinks = mx_world
    sinks.append(SmtpSink.start(tmp_path / "sink1", "-r", "RCPT"))
    port = sinks[0].port

    paced: list[Destination] = []

    async def body(spool: Spool, mgr: DeliveryManager) -> None:
        async def pacing(dest: Destination) -> None:  # the outbound pacing hook the rate limiter plugs into
            paced.append(dest)

        mgr.before_connect = pacing
        qid = await spool.store("alice@example.test", ["carol@remote.test"], MSG, {})
        recs = await until(lambda: [r for r in spool.read_log(qid) if r.get("e") == "deferred"], what="a deferral")
        assert "carol@remote.test" in recs[0]["why"] and recs[0]["why"]["carol@remote.test"].startswith("4.")
        assert sinks[0].messages() == []
        sinks[0].stop()  # the next hop recovers
        sinks.append(SmtpSink.start(tmp_path / "sink2", port=port))
        await until(lambda: queue_empty(spool), what="delivery after retry")
        got.extend(sinks[1].messages())

    got: list[bytes] = []
    with_relay(cfg, body, resolver=dns_server.resolver(), mx_port=port)
    assert len(got) == 1
    got = got[0]
    assert len(paced) >= 2 and {(d.kind, d.key) for d in paced} == {("mx", "mx:remote.test")}
    assert b"carol@remote.test" in got and b"Subject: hello" in got
    assert maildir_new(cfg, "alice@example.test") == []  # no DSN for a delivered message


def test_mx_5xx_bounces_with_dsn_but_never_to_null_sender(mx_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, dns_server, sinks = mx_world
    sinks.append(SmtpSink.start(tmp_path / "sink", "-f", "RCPT"))

    async def body(spool: Spool, mgr: DeliveryManager) -> None:
        await spool.store("alice@example.test", ["carol@remote.test"], MSG, {})
        await spool.store("", ["dave@remote.test"], MSG, {})  # a bounce of someone else's: no DSN back
        await until(lambda: queue_empty(spool) and mgr.stats["failed"] == 2, what="both failed")

    with_relay(cfg, body, resolver=dns_server.resolver(), mx_port=sinks[0].port)
    [dsn_file] = maildir_new(cfg, "alice@example.test")
    _, blocks = parse_dsn(dsn_file)
    assert len(blocks) == 2  # exactly one recipient block: carol
    assert blocks[1]["Final-Recipient"] == "rfc822; carol@remote.test"
    assert blocks[1]["Action"] == "failed" and blocks[1]["Status"].startswith("5.")
    assert blocks[1]["Remote-MTA"] == "dns; mx.remote.test"
    assert blocks[1]["Diagnostic-Code"].startswith("smtp; 5")


def test_lifetime_expiry_bounces_and_delay_dsn(mx_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, dns_server, sinks = mx_world
    cfg = tune(Path(cfg.source), relay={"max_lifetime": 3, "delay_warning": 1})
    sinks.append(SmtpSink.start(tmp_path / "sink", "-r", "RCPT"))

    async def body(spool: Spool, mgr: DeliveryManager) -> None:
        await spool.store("alice@example.test", ["carol@remote.test"], MSG, {})
        await until(lambda: queue_empty(spool) and len(maildir_new(cfg, "alice@example.test")) == 2,
                    what="delay DSN then failure DSN")

    with_relay(cfg, body, resolver=dns_server.resolver(), mx_port=sinks[0].port)
    actions = sorted(parse_dsn(p)[1][1]["Action"] for p in maildir_new(cfg, "alice@example.test"))
    assert actions == ["delayed", "failed"]
    assert sinks[0].messages() == []


def test_unknown_domain_is_permanent_and_outside_refuse_bounces(devbox: tuple[Path, Config]) -> None:
    _, cfg = devbox  # outside = refuse (the default)

    async def body(spool: Spool, mgr: DeliveryManager) -> None:
        await spool.store("alice@example.test", ["carol@outsider.test"], MSG, {})
        await until(lambda: queue_empty(spool) and maildir_new(cfg, "alice@example.test"), what="refusal DSN")

    with_relay(cfg, body)
    [dsn_file] = maildir_new(cfg, "alice@example.test")
    _, blocks = parse_dsn(dsn_file)
    assert blocks[1]["Status"] == "5.7.1"


def test_member_never_gets_plaintext_and_suspended_member_is_held(devbox: tuple[Path, Config], tmp_path: Path) -> None:
    require_peers("smtp-sink")
    _, cfg = devbox
    sink = SmtpSink.start(tmp_path / "sink")  # speaks no STARTTLS
    try:
        write_registry(cfg, [
            {"id": "isp-b", "status": "active", "domains": ["isp-b.test"],
             "relays": [{"host": "127.0.0.1", "port": sink.port, "addresses": ["127.0.0.2/32"]}]},
            {"id": "isp-c", "status": "suspended", "domains": ["isp-c.test"],
             "relays": [{"host": "127.0.0.1", "port": sink.port, "addresses": ["127.0.0.3/32"]}]},
        ])

        async def body(spool: Spool, mgr: DeliveryManager) -> None:
            a = await spool.store("alice@example.test", ["erin@isp-b.test"], MSG, {})
            c = await spool.store("alice@example.test", ["fred@isp-c.test"], MSG, {})
            for qid in (a, c):
                await until(lambda q=qid: [r for r in spool.read_log(q) if r.get("attempts", 0) >= 2],
                            what="two attempts")
            why_a = spool.read_log(a)[-1]["why"]["erin@isp-b.test"]
            why_c = spool.read_log(c)[-1]["why"]["fred@isp-c.test"]
            assert why_a.startswith("4.7.4") and "STARTTLS" in why_a
            assert why_c.startswith("4.4.4") and "suspended" in why_c
            assert spool.path(a).exists() and spool.path(c).exists()

        with_relay(cfg, body)
        assert sink.messages() == []  # nothing ever went to a member in plaintext
        assert maildir_new(cfg, "alice@example.test") == []  # temporary: no bounce
    finally:
        sink.stop()
