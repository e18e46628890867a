"""The relay refuses members (421 4.7.0) by itself when nobody vouches that the registry is current.

No sync agent runs here: the relay is started alone, as on a box whose
registry-sync program has died. Its last report (``state.json``) may be stale,
deleted or corrupt; the relay must then enforce the verified TUF metadata's
expiry itself and treat a missing or unreadable report as "expired".
Customers are never affected (tests/relay_front/test_mx.py).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.registry.agent import run_round
from appliance.registry.repo import OperatorRepo
from tests.relay_front.relay import RawSMTP, Relay, make_relay

pytestmark = pytest.mark.peers

EXPIRES_IN = 12.0  # seconds the re-published metadata stays valid (enough to publish and sync under load)


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    r = make_relay(tmp_path)
    yield r
    r.stop()


def greeting(relay: Relay, prefix: str, timeout: float = 15) -> str:
    """Connect as the member (127.0.0.1) until the greeting starts with PREFIX (bounded); the last greeting."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        c = RawSMTP("127.0.0.1", relay.port("mx"))
        text = c.greeting
        c.close()
        if text.startswith(prefix):
            break
        time.sleep(0.1)
    return text


def publish_and_sync(relay: Relay, now: dt.datetime | None = None) -> dict[str, object]:
    """The operator publishes (signed as of NOW) and the agent runs exactly one round, then 'dies'."""
    OperatorRepo(relay.dir / "registry-repo").publish(now=now)
    res = run_round(relay.cfg)
    assert res.ok, res.message
    return res.state


def test_expired_registry_with_the_agent_dead(relay: Relay) -> None:
    # Signed long enough ago that the timestamp role runs out EXPIRES_IN seconds from now.
    days = OperatorRepo(relay.dir / "registry-repo").expiry_days("timestamp")
    signed = dt.datetime.now(dt.UTC) - dt.timedelta(days=days) + dt.timedelta(seconds=EXPIRES_IN)
    state = publish_and_sync(relay, signed.replace(microsecond=0))
    assert state["expired"] is False  # the agent's last word: current
    time.sleep(EXPIRES_IN + 1)  # the agent is dead; the metadata runs out meanwhile
    assert json.loads((relay.cfg.registry_dir / "state.json").read_text())["expired"] is False
    relay.start()
    g = greeting(relay, "421")
    assert g.startswith("421 4.7.0"), f"member accepted on expired metadata: {g}"
    assert "expired" in relay.log_text()

    # Control: a current registry (published and synced now) lets the member in again.
    publish_and_sync(relay)
    relay.hup()
    g = greeting(relay, "220")
    assert g.startswith("220"), g


def test_missing_or_corrupt_agent_report_means_expired(relay: Relay) -> None:
    reg_dir = relay.cfg.registry_dir
    state, timestamp = reg_dir / "state.json", reg_dir / "tuf" / "timestamp.json"
    good_state, good_timestamp = state.read_bytes(), timestamp.read_bytes()
    relay.start()
    assert greeting(relay, "220").startswith("220")

    state.unlink()  # the agent stopped and its report was deleted
    relay.hup()
    g = greeting(relay, "421")
    assert g.startswith("421 4.7.0"), f"member accepted without state.json: {g}"
    state.write_bytes(good_state)
    relay.hup()
    assert greeting(relay, "220").startswith("220")

    for corrupt in (b'{"expired": fal', b"[]", b'{"version": 3}'):
        state.write_bytes(corrupt)
        relay.hup()
        g = greeting(relay, "421")
        assert g.startswith("421 4.7.0"), f"member accepted with state.json {corrupt!r}: {g}"
    state.write_bytes(good_state)

    timestamp.write_bytes(b'{"signed": ')  # the verified metadata itself is unreadable
    relay.hup()
    g = greeting(relay, "421")
    assert g.startswith("421 4.7.0"), f"member accepted with corrupt TUF metadata: {g}"
    timestamp.write_bytes(good_timestamp)
    relay.hup()
    assert greeting(relay, "220").startswith("220")
