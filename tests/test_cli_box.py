"""The CLI end to end: init, up, status, down, with no process left behind."""

from __future__ import annotations

import json
import os

from appliance.catalog import SERVICES
from tests.helpers.box import Box, pids_under


def test_init_writes_a_complete_dev_box(box: Box) -> None:
    cfg = box.cfg
    for p in (cfg.tls.cert, cfg.tls.key, cfg.dkim.key):
        assert p.startswith(str(box.dir))
    reg = json.loads((box.dir / "lib/registry/registry.json").read_text())
    (member,) = reg["members"]
    assert member["status"] == "active" and member["relays"][0]["addresses"] == ["127.0.0.1/32"]
    # Private keys are not world-readable.
    assert os.stat(cfg.tls.key).st_mode & 0o077 == 0
    assert os.stat(cfg.dkim.key).st_mode & 0o077 == 0


def test_init_refuses_to_overwrite(box: Box) -> None:
    proc = box.cli("init", "--dev", str(box.dir), check=False)
    assert proc.returncode == 1 and "already exists" in proc.stderr


def test_status_json_lists_endpoints_and_honest_states(box: Box) -> None:
    st = box.status()
    names = {e["name"]: e for e in st["endpoints"]}
    assert names["submissions"]["tls"] == "implicit" and names["submission"]["tls"] == "starttls"
    assert names["imap"]["port"] == box.port("imap")
    for s in st["services"]:
        spec = next(x for x in SERVICES if x.name == s["name"])
        assert s["state"] == ("stopped" if spec.built else "not built")
    assert st["tls"]["source"] == "self-signed" and st["tls"]["days_left"] > 300
    assert st["queue"] == {"messages": 0, "corrupt": 0}
    assert set(st) >= {"schema", "box", "supervisor", "services", "endpoints", "queue", "registry", "tls",
                       "held_accounts"}


def test_up_status_down_leaves_nothing(box: Box) -> None:
    box.add_user("alice")
    box.up()
    st = box.status()
    assert st["supervisor"] == "running"
    for s in st["services"]:
        spec = next(x for x in SERVICES if x.name == s["name"])
        assert s["state"] == ("running" if spec.built else "not built"), s
    assert pids_under(box.dir)
    again = box.cli("up", check=False)
    assert again.returncode == 1 and "already running" in again.stderr
    box.down()
    assert pids_under(box.dir) == []
    assert box.status()["supervisor"] == "stopped"
