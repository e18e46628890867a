"""kill -9 of the real relay process at the fsync, rename and reply points, and at random under load.

Every message that got a 250 after DATA must be delivered after a restart
(duplicates are allowed; a loss is not).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import Config
from tests.helpers.wait import wait_for
from tests.relay_back.relayproc import Load, RelayProcess, delivered_ids, raise_member_limits

pytestmark = pytest.mark.peers
RCPT = "alice@example.test"


@pytest.fixture
def relay_box(devbox: tuple[Path, Config], tmp_path: Path) -> Iterator[tuple[Config, list[RelayProcess]]]:
    _, cfg = devbox
    raise_member_limits(cfg)
    procs: list[RelayProcess] = []
    yield cfg, procs
    for p in procs:
        p.kill9()


def maildir(cfg: Config) -> Path:
    return Path(cfg.paths.mail_dir) / "example.test" / "alice"


def restart_and_check(cfg: Config, procs: list[RelayProcess], tmp_path: Path, acked: list[str]) -> None:
    """Start a clean relay; it must deliver every acknowledged message and empty the queue."""
    relay = RelayProcess(Path(cfg.source), tmp_path / "relay-final.log").start(cfg)
    procs.append(relay)
    queue = Path(cfg.paths.spool_dir) / "queue"
    wait_for("queue drained after restart", lambda: not any(queue.iterdir()), 60)
    missing = set(acked) - delivered_ids(maildir(cfg))
    assert not missing, f"{len(missing)} acknowledged message(s) lost: {sorted(missing)[:5]}"
    assert not any((Path(cfg.paths.spool_dir) / "corrupt").iterdir())
    relay.stop()


# after_dirsync is store()'s point (DSNs); SMTP messages are streamed and pass after_body_write instead.
@pytest.mark.parametrize("fault", ["after_body_write:7", "after_write:7", "after_fsync:7", "after_rename:7",
                                   "before_reply:9", "after_deliver:4"])
def test_kill_at_fault_point_loses_nothing(relay_box, tmp_path: Path, fault: str) -> None:  # type: ignore[no-untyped-def]
    cfg, procs = relay_box
    relay = RelayProcess(Path(cfg.source), tmp_path / "relay-fault.log", fault=fault).start(cfg)
    procs.append(relay)
    load = Load(cfg.listeners.mx.host, cfg.listeners.mx.port, RCPT, sessions=4, max_messages=200)
    load.run()
    assert relay.wait_exit(60) == 137, "the fault point was not reached"
    assert len(load.acked) < 200  # the crash cut the run short
    restart_and_check(cfg, procs, tmp_path, load.acked)


def test_random_kills_under_load(relay_box, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, procs = relay_box
    rng = random.Random(20261130)
    acked: list[str] = []
    cut_short = 0
    for round_no in range(5):
        relay = RelayProcess(Path(cfg.source), tmp_path / f"relay-{round_no}.log").start(cfg)
        procs.append(relay)
        load = Load(cfg.listeners.mx.host, cfg.listeners.mx.port, RCPT, sessions=8, max_messages=3000,
                    tag=f"r{round_no}")
        t = load.start_background()
        time.sleep(rng.uniform(0.3, 1.5))
        relay.kill9()
        load.stop()
        t.join(60)
        acked += load.acked
        cut_short += len(load.replies) < 3000
    assert acked, "no message was acknowledged at all"
    assert cut_short >= 3, "the kills did not land while the load was running"
    restart_and_check(cfg, procs, tmp_path, acked)
