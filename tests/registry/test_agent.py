"""The sync agent as the box runs it: under supervisor, polling, reporting, expiring, filling the firewall set."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.registry.agent import run_round
from tests.conftest import require
from tests.helpers.box import Box
from tests.helpers.netns import Net
from tests.helpers.wait import wait_for, wait_logged
from tests.registry.conftest import Operator, greeting_verdict, point_box, relay_running


def own_registry(box: Box) -> Operator:
    """The registry `appliance init --dev` made for this box."""
    return Operator(box.dir / "registry-repo", box.dir / "registry-keys")


def test_dev_box_registry_is_a_pinned_tuf_repository(box: Box) -> None:
    cfg = box.cfg
    assert cfg.registry.url == (box.dir / "registry-repo" / "public").as_uri()
    assert Path(cfg.registry.root).read_bytes() == (box.dir / "registry-repo/public/metadata/1.root.json").read_bytes()
    assert all(k.stat().st_mode & 0o077 == 0 for k in (box.dir / "registry-keys").glob("*.key"))
    res = box.cli("registry", "sync", "--once")
    assert "1 member(s)" in res.stdout
    st = box.status()["registry"]
    assert st["version"] == 1 and st["members"] == 1 and st["alarm"] is None


def test_agent_under_supervisor_picks_up_a_suspension(box: Box) -> None:
    point_box(box, box.cfg.registry.url, Path(box.cfg.registry.root), poll_interval=1)
    op = own_registry(box)
    box.up()
    try:
        services = {s["name"]: s["state"] for s in box.status()["services"]}
        assert services["registry_sync"] == "running"
        op.cli("add-member", "--without-probe", "--id", "isp-b", "--domain", "isp-b.test", "--relay", "mx.isp-b.test=192.0.2.20")
        op.cli("publish")
        reg_file = box.cfg.registry_dir / "registry.json"
        wait_for("the new member in registry.json", lambda: "isp-b" in reg_file.read_text(), 60)
        op.cli("suspend", "isp-b")
        op.cli("publish")
        wait_for("the suspension in registry.json",
                 lambda: json.loads(reg_file.read_text())["members"][1]["status"] == "suspended", 60)
        st = box.status()["registry"]
        assert st["version"] == 3 and st["alarm"] is None
        wait_logged(Path(box.cfg.paths.log_dir) / "registry_sync.log", "registry version 3")
    finally:
        box.down()


def test_expired_last_good_registry_is_reported_and_never_trusted(box: Box) -> None:
    cfg = box.cfg
    # The registry server is gone; the trusted copy's metadata (90 days on a dev box) runs out.
    shutil.rmtree(box.dir / "registry-repo" / "public")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=100)
    res = run_round(cfg, now=later)
    assert not res.ok and "download failed" in res.message
    state = json.loads((cfg.registry_dir / "state.json").read_text())
    assert state["expired"] is True
    assert "members get 421 4.7.0" in state["alarm"]
    assert "download failed" in state["alarm"]
    assert (cfg.registry_dir / "registry.json").exists()  # kept: customers' routing still needs domains
    metrics = (cfg.registry_dir / "metrics.prom").read_text()
    assert "appliance_registry_expired 1.0" in metrics


@pytest.mark.peers
def test_members_get_421_once_the_last_good_registry_expires_and_customers_do_not(box: Box) -> None:
    require("swaks")
    alice = box.add_user("alice")
    cfg = box.cfg
    member = cfg.listeners.mx.host
    with relay_running(box, up=False):
        assert greeting_verdict(box, member, alice) == "accepted"
        shutil.rmtree(box.dir / "registry-repo" / "public")  # the registry server is gone...
        assert not run_round(cfg, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=100)).ok  # ...for 100 days
        wait_for("members refused with 421", lambda: greeting_verdict(box, member, alice) == "421 4.7.0", 60)
        # Customers are unaffected: authenticated submission still queues.
        sub = cfg.listeners.submission
        out = subprocess.run(["swaks", "--server", f"{sub.host}:{sub.port}", "--tls", "--auth", "PLAIN",
                              "--auth-user", alice, "--auth-password", box.passwords[alice], "--from", alice,
                              "--to", alice, "--timeout", "30"], capture_output=True, text=True, timeout=60).stdout
        assert "250 2.0.0" in out and "queued" in out, out


@pytest.mark.root
def test_firewall_set_lists_active_members_only(box: Box) -> None:
    op = own_registry(box)
    op.cli("add-member", "--without-probe", "--id", "isp-b", "--domain", "isp-b.test", "--relay", "mx.isp-b.test=192.0.2.20+2001:db8::20")
    op.cli("add-member", "--without-probe", "--id", "isp-c", "--domain", "isp-c.test", "--relay", "mx.isp-c.test=192.0.2.30", "--suspended")
    op.cli("publish")
    point_box(box, box.cfg.registry.url, Path(box.cfg.registry.root), firewall="auto")
    net = Net()
    try:
        fw = net.add_host("fw", 2)
        # What the firewall state sets up on a real box.
        table = ("table inet appliance {\n  set consortium_v4 { type ipv4_addr; flags interval; }\n"
                 "  set consortium_v6 { type ipv6_addr; flags interval; }\n}\n")
        fw.run("nft", "-f", "-", input=table, check=True)
        res = fw.run(sys.executable, "-m", "appliance", "-c", str(box.config_file), "registry", "sync", "--once")
        assert res.returncode == 0, res.stderr
        v4 = fw.run("nft", "list", "set", "inet", "appliance", "consortium_v4", check=True).stdout
        v6 = fw.run("nft", "list", "set", "inet", "appliance", "consortium_v6", check=True).stdout
        assert "127.0.0.1" in v4 and "192.0.2.20" in v4 and "192.0.2.30" not in v4
        assert "2001:db8::20" in v6
    finally:
        assert not net.teardown()
