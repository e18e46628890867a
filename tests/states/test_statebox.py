"""The fleet's "state" box (states/appliance/statebox.sls): redis-server and PostgreSQL where the pillar asks.

Runs after the other states tests (file order): it adds two packages to the session's tree.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.states.tree import PILLAR_EXAMPLE, Tree

pytestmark = [pytest.mark.slow, pytest.mark.root]

STATEBOX = """
  state_services: [redis, postgresql]
  statebox:
    redis:
      bind: [127.0.0.1, 10.0.0.10]
    postgresql:
      listen: [localhost, 10.0.0.10]
"""


def _pillar(tmp_path: Path, extra: str) -> Path:
    p = tmp_path / "statebox.sls"
    p.write_text(PILLAR_EXAMPLE.read_text() + extra)
    return p


def test_unknown_state_service_is_refused_before_anything_runs(applied: Tree, tmp_path: Path) -> None:
    run = applied.apply(_pillar(tmp_path, STATEBOX.replace("[redis, postgresql]", "[redis, mysql]")))
    assert run.returncode != 0
    assert "pillar appliance:state_services: value mysql: unknown: must be redis or postgresql" in run.stdout
    with pytest.raises(AssertionError, match="did not compile"):
        _ = run.states
    assert not applied.file("/usr/bin/redis-server").exists()


def test_state_box_gets_redis_and_postgresql_and_a_second_apply_changes_nothing(applied: Tree,
                                                                                 tmp_path: Path) -> None:
    pillar = _pillar(tmp_path, STATEBOX)
    first = applied.apply(pillar)
    assert first.returncode == 0, first.failed() or first.stderr[-3000:]
    changed = first.changed()
    assert {"appliance-statebox-redis-package", "appliance-statebox-postgresql-package"} <= set(changed)
    conf = applied.file("/etc/redis/redis.conf").read_text().splitlines()
    assert [ln for ln in conf if ln.startswith("bind ")] == ["bind 127.0.0.1 10.0.0.10"]
    assert "listen_addresses = 'localhost,10.0.0.10'" in applied.file(
        "/etc/postgresql/15/main/conf.d/appliance.conf").read_text()
    for unit in ("redis-server.service", "postgresql.service"):
        enabled = subprocess.run(["chroot", str(applied.path), "systemctl", "is-enabled", unit],
                                 capture_output=True, text=True)
        assert enabled.stdout.strip() == "enabled", unit
    again = applied.apply(pillar)
    assert again.returncode == 0, again.failed()
    assert again.changed() == {}
