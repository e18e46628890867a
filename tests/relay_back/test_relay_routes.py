"""Sponsored domains (`relay.relay_routes`): mail for them goes to their configured next hop over TLS.

The sponsor is a dev box whose delivery runs in-process; the next hop is a second dev
box (the sponsored edge box, colo.test) running its real relay process on loopback.
The registry lists colo.test under the sponsor's own member entry, as the consortium
does, so the test also shows the sponsor never routes its sponsored domain to itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.config import Config, ConfigError, load
from appliance.delivery import DeliveryManager
from appliance.spool import Spool
from appliance.tlsfiles import load_cert, spki_sha256
from tests.helpers.box import make_box, run_cli
from tests.helpers.wait import wait_for
from tests.relay_back.conftest import tune
from tests.relay_back.relayproc import RelayProcess, delivered_ids
from tests.relay_back.test_delivery import MSG, until, with_relay

pytestmark = pytest.mark.peers


def sponsor_colo(config_file: Path, cfg: Config, route: dict[str, object]) -> Config:
    """The sponsor accepts colo.test, routes it by ROUTE, and its registry entry lists colo.test."""
    reg_file = cfg.registry_dir / "registry.json"
    reg = json.loads(reg_file.read_text())
    if "colo.test" not in reg["members"][0]["domains"]:
        reg["members"][0]["domains"].append("colo.test")
        reg_file.write_text(json.dumps(reg, indent=2))
    return tune(config_file, relay={"relay_domains": ["colo.test"], "relay_routes": {"colo.test": route}})


def deliver_once(cfg: Config, done) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    """Queue one message to home@colo.test, run delivery until DONE(spool, qid); returns the message's log."""
    log: list[dict[str, object]] = []

    async def body(spool: Spool, mgr: DeliveryManager) -> None:
        qid = await spool.store("alice@example.test", ["home@colo.test"], MSG, {})
        await until(lambda: done(spool, qid), what="delivery to the relay route")
        log.extend(spool.read_log(qid) if spool.path(qid).exists() else [])

    with_relay(cfg, body)
    return log


def test_relay_route_delivers_to_next_hop_over_pinned_tls(devbox: tuple[Path, Config], tmp_path: Path) -> None:
    config_file, cfg = devbox
    colo_box = make_box(tmp_path, domain="colo.test", name="colo")
    colo_box.add_user("home")
    colo = colo_box.cfg
    relay = RelayProcess(colo_box.config_file, tmp_path / "colo-relay.log").start(colo)
    hop = {"host": colo.listeners.mx.host, "port": colo.listeners.mx.port}
    home = Path(colo.paths.mail_dir) / "colo.test" / "home"
    try:
        # A wrong pin: nothing is sent, the message waits (temporary), never a plaintext fallback.
        wrong = sponsor_colo(config_file, cfg, {**hop, "spki_sha256": ["0" * 64]})
        log = deliver_once(wrong, lambda s, q: any(r.get("attempts", 0) >= 1 for r in s.read_log(q)))
        why = [r for r in log if "why" in r][-1]["why"]["home@colo.test"]  # type: ignore[index]
        assert why.startswith("4.7.5") and "pins" in why, why
        assert "<m1@example.test>" not in delivered_ids(home)

        # The right pin: delivered to colo's Maildir by colo's relay, over TLS.
        pin = spki_sha256(load_cert(colo.tls.cert))
        good = sponsor_colo(config_file, cfg, {**hop, "spki_sha256": [pin]})
        deliver_once(good, lambda s, q: not s.path(q).exists())
        wait_for("colo's relay to store the message", lambda: "<m1@example.test>" in delivered_ids(home), 30)
        got = next(p for sub in ("new", "cur") for p in (home / sub).glob("*")).read_bytes()
        head = got.split(b"\n\n", 1)[0]
        assert b"by mx.colo.test" in head and b"ESMTPS" in head, head  # colo took it over TLS
        # Nothing went to the sponsor's own Maildirs (the registry lists colo.test under the sponsor).
        assert not (Path(cfg.paths.mail_dir) / "colo.test").exists()
    finally:
        relay.stop()


def test_relay_domain_without_route_refused_at_config_load(devbox: tuple[Path, Config]) -> None:
    config_file, _ = devbox
    text = config_file.read_text()
    config_file.write_text(text.replace("[relay]\n", '[relay]\nrelay_domains = ["colo.test"]\n', 1))
    with pytest.raises(ConfigError, match=r"key relay\.relay_domains: colo\.test has no next hop"):
        load(config_file)
    proc = run_cli(config_file, "config", "check", check=False)
    assert proc.returncode == 2, proc
    assert proc.stderr.strip().count("\n") == 0 and "relay.relay_routes" in proc.stderr, proc.stderr


def test_relay_route_refuses_plaintext_pins(devbox: tuple[Path, Config]) -> None:
    config_file, cfg = devbox
    with pytest.raises(ConfigError, match=r"key relay\.relay_routes\.colo\.test\.spki_sha256: .*tls = 'required'"):
        sponsor_colo(config_file, cfg, {"host": "127.0.0.1", "tls": "opportunistic", "spki_sha256": ["a" * 64]})
