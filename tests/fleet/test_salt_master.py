"""A salt-master applies the formula to two nspawn minions (issue 16 items 6 and 7).

Three systemd-nspawn containers boot one tree (states/apply.sh with pillar.example
and `fleet:master`), each in a network namespace of tests/helpers/netns.py (the
network rule: no traffic leaves the namespaces this test made). The master box
re-applies itself with `fleet:serve` (install.sh, as an operator bootstraps a
master); the two mail boxes are its minions, named by a minion.d/id.conf each.
After their keys are accepted, one `salt 'mail*' state.apply` gives each box its own
pillar (a different hostname), and `appliance fleet status` on the master shows both.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require
from tests.helpers.netns import Net
from tests.states.tree import PILLAR_EXAMPLE, REPO, Applied, Container, Tree, base_tree, booted, build_wheel

SALT_CONF = "/opt/appliance/salt/etc-fleet"
SALT = ["/opt/appliance/salt/bin/salt", f"--config-dir={SALT_CONF}"]
FLEET_PILLAR = REPO / "states" / "fleet-pillar"
EXAMPLE_MASTER = "10.0.0.10"  # the master address in states/fleet-pillar/*.sls


def _with_fleet(pillar: str, master: str, serve: bool) -> str:
    """pillar.example plus `fleet:` (and, on the master, Salt's two ports in the firewall)."""
    if serve:
        pillar, n = re.subn(r"^(\s+)extra_tcp: \[\]", r"\1extra_tcp: [4505, 4506]", pillar, count=1, flags=re.M)
        assert n == 1
    return pillar + f"\n  fleet:\n    master: {master}\n    serve: {'true' if serve else 'false'}\n"


def _write(box: Container, path: str, text: str) -> None:
    subprocess.run(["nsenter", "-t", str(box.pid1), "-a", "sh", "-c", f"mkdir -p $(dirname {path}) && cat > {path}"],
                   input=text, text=True, check=True, timeout=30)


def _until(what: str, probe, timeout: float, step: float = 2.0) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        ok, last = probe()
        if ok:
            return last
        time.sleep(step)
    raise AssertionError(f"{what} not within {timeout}s; last: {last[-2000:]}")


@dataclass
class Fleet:
    master: Container
    boxes: dict[str, Container]
    master_address: str

    def salt(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.master.run(*SALT, *argv, timeout=timeout)

    def salt_key(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.master.run("/opt/appliance/salt/bin/salt-key", f"--config-dir={SALT_CONF}", *argv)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if os.geteuid() != 0:
        pytest.skip("needs root (chroot, systemd-nspawn, network namespaces)")
    require("debootstrap", "chroot", "systemd-nspawn", "nsenter", "ip")
    work = tmp_path_factory.mktemp("saltfleet")
    net = Net()
    try:
        hosts = {"master": net.add_host("saltm", 10), "mail1": net.add_host("mail1", 11),
                 "mail2": net.add_host("mail2", 12)}
        net.check_routes()
        master_ip = hosts["master"].address
        tree = Tree(work / "tree", build_wheel(work / "dist"))
        subprocess.run(["cp", "-a", str(base_tree()), str(tree.path)], check=True)
        bootstrap = work / "bootstrap.sls"
        bootstrap.write_text(_with_fleet(PILLAR_EXAMPLE.read_text(), master_ip, serve=False))
        first = tree.apply(bootstrap)
        assert first.returncode == 0, first.failed() or first.stderr[-3000:]
        # Each box's minion id, as an operator names a box: minion.d/id.conf (Salt's default_include).
        ids = {}
        for name in hosts:
            ids[name] = work / f"{name}.id.conf"
            ids[name].write_text(f"id: {name}\n")
        with contextlib.ExitStack() as stack:
            def boot(name: str) -> Container:
                return stack.enter_context(booted(
                    tree.path, work / f"{name}.log", timeout=600, netns=hosts[name].name,
                    # CAP_NET_ADMIN: nspawn grants it with --private-network only; the
                    # firewall (nftables.service) needs it in this test's namespace too.
                    nspawn_args=("--capability=CAP_NET_ADMIN", f"--bind-ro={ids[name]}:{SALT_CONF}/minion.d/id.conf")))

            master = boot("master")
            # The master box: install.sh again, with fleet:serve (starts appliance-salt-master).
            _write(master, "/root/master.sls", _with_fleet(PILLAR_EXAMPLE.read_text(), master_ip, serve=True))
            served = master.run("/opt/appliance/src/install.sh", "/root/master.sls", "--out=json", timeout=900)
            assert served.returncode == 0, Applied(served.returncode, served.stdout, served.stderr).failed()
            # The fleet's pillar tree: the example of states/fleet-pillar/, with this master's address.
            pillar_dir = "/srv/appliance-fleet/pillar"
            _write(master, f"{pillar_dir}/appliance-common.sls", PILLAR_EXAMPLE.read_text())
            for f in ("top.sls", "mail1.sls", "mail2.sls"):
                _write(master, f"{pillar_dir}/{f}", (FLEET_PILLAR / f).read_text().replace(EXAMPLE_MASTER, master_ip))
            boxes = {"mail1": boot("mail1"), "mail2": boot("mail2")}
            fl = Fleet(master, boxes, master_ip)
            # The minions knock (every acceptance_wait_time, 10 s); nothing is auto-accepted.
            def pending() -> tuple[bool, str]:
                out = fl.salt_key("--list=unaccepted", "--out=json").stdout
                return all(m in out for m in ("mail1", "mail2")), out
            _until("both minions' keys waiting on the master", pending, 180)
            yield fl
    finally:
        stragglers = net.teardown()
        shutil.rmtree(work, ignore_errors=True)
        assert net.leftovers() == [], stragglers


@pytest.mark.slow
@pytest.mark.root
def test_master_applies_each_minions_pillar_and_fleet_status_shows_both(fleet: Fleet) -> None:
    accepted = fleet.salt_key("-a", "mail*", "-y")
    assert accepted.returncode == 0, accepted.stderr

    def pinged() -> tuple[bool, str]:
        out = fleet.salt("--out=json", "--static", "--timeout=10", "mail*", "test.ping").stdout
        try:
            data = json.loads(out)
        except json.JSONDecodeError:
            return False, out
        return data.get("mail1") is True and data.get("mail2") is True, out
    _until("both minions answering the master", pinged, 120)

    run = fleet.salt("--out=json", "--static", "--timeout=900", "mail*", "state.apply", timeout=1000)
    results = json.loads(run.stdout)
    for box in ("mail1", "mail2"):
        states = results[box]
        assert isinstance(states, dict), f"{box}: {states}"
        failed = [f"{s['__id__']}: {s['comment']}" for s in states.values() if s["result"] is not True]
        assert failed == [], f"{box}: {failed}"
    assert run.returncode == 0, run.stderr[-2000:]
    # Through the master too, a second highstate changes nothing.
    again = json.loads(fleet.salt("--out=json", "--static", "--timeout=900", "mail*", "state.apply",
                                  timeout=1000).stdout)
    for box in ("mail1", "mail2"):
        assert {s["__id__"]: s["changes"] for s in again[box].values() if s["changes"]} == {}, box
    # Each box got its own pillar: its own hostname in its config, from the master's pillar tree.
    for box, hostname in (("mail1", "mx1.example.net"), ("mail2", "mx2.example.net")):
        toml = fleet.boxes[box].run("cat", "/etc/appliance/appliance.toml", check=True).stdout
        assert tomllib.loads(toml)["box"]["hostname"] == hostname

    status = fleet.master.run("/opt/appliance/venv/bin/appliance", "fleet", "status", "--target", "mail*", "--json",
                              timeout=200)
    rows = json.loads(status.stdout)
    assert sorted(rows) == ["mail1", "mail2"], status.stdout
    assert rows["mail1"]["hostname"] == "mx1.example.net"
    assert rows["mail2"]["hostname"] == "mx2.example.net"
    for row in rows.values():
        assert row["member_id"] == "example-net"
        assert row["services"].get("relay") == "running", row
    text = fleet.master.run("/opt/appliance/venv/bin/appliance", "fleet", "status", "--target", "mail*", timeout=200)
    lines = text.stdout.strip().splitlines()
    assert [ln.split()[:2] for ln in lines] == [["mail1", "mx1.example.net"], ["mail2", "mx2.example.net"]], text.stdout

    # No master: one clear line, exit 1.
    fleet.master.run("systemctl", "stop", "appliance-salt-master.service", check=True)
    down = fleet.master.run("/opt/appliance/venv/bin/appliance", "fleet", "status", "--timeout", "5", timeout=120)
    assert down.returncode == 1
    assert down.stderr.startswith("appliance: no salt-master reachable"), down.stderr


def test_fleet_status_without_salt_says_so(tmp_path: Path) -> None:
    """Not on a master (no salt command): one line naming what is missing, exit 1, nothing else printed."""
    cli = [sys.executable, "-m", "appliance", "fleet", "status"]
    run = subprocess.run([*cli, "--salt", str(tmp_path / "no-salt")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.startswith(f"appliance: no salt command ({tmp_path / 'no-salt'})"), run.stderr
