"""`state.apply` of the appliance formula into a fresh Debian 12 tree: converges, is idempotent, refuses bad pillar."""

from __future__ import annotations

import hashlib
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.states.tree import PILLAR_EXAMPLE, Applied, Tree

pytestmark = [pytest.mark.slow, pytest.mark.root]


def test_first_apply_assembles_the_box(fresh_apply: tuple[Tree, Applied]) -> None:
    tree, first = fresh_apply
    assert first.returncode == 0, first.failed() or first.stderr[-3000:]
    assert first.failed() == []
    assert len(first.changed()) > 20  # a fresh tree: nearly everything was done
    # The config is pillar.example's, rendered to TOML, valid for the services' own loader.
    cfg = tomllib.loads(tree.file("/etc/appliance/appliance.toml").read_text())
    assert cfg["box"]["hostname"] == "mx.example.net"
    assert cfg["tls"] == {"cert": "/etc/appliance/tls/selfsigned/cert.pem",
                          "key": "/etc/appliance/tls/selfsigned/key.pem", "source": "self-signed"}
    check = subprocess.run(["chroot", str(tree.path), "/opt/appliance/venv/bin/appliance", "-c",
                            "/etc/appliance/appliance.toml", "config", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    # Units enabled in the chroot (nothing started there).
    for unit in ("appliance.service", "nftables.service", "appliance-firewall-sync.path", "logrotate.timer"):
        enabled = subprocess.run(["chroot", str(tree.path), "systemctl", "is-enabled", unit], capture_output=True, text=True)
        assert enabled.stdout.strip() == "enabled", unit
    assert "ExecStart=/opt/appliance/venv/bin/appliance up --foreground" in tree.file(
        "/etc/systemd/system/appliance.service").read_text()
    assert tree.file("/etc/appliance/dkim/mail.txt").read_text().strip().splitlines()[-1].startswith("v=DKIM1; k=rsa; p=")
    # The firewall ruleset is valid nft (checked by the state too) and opens what the issue says.
    nft = tree.file("/etc/nftables.conf").read_text()
    assert "tcp dport 25 ip saddr @consortium_v4 accept" in nft
    assert re.search(r"tcp dport \{ 110, 143, 465, 587, 993, 995 \} accept", nft)
    # Nothing of the apply is left behind in the tree.
    assert not tree.file("/usr/sbin/policy-rc.d").exists()
    assert not tree.file("/run/appliance-install").exists()
    assert not (tree.path / "proc" / "self").exists()


def test_second_apply_changes_nothing(applied: Tree) -> None:
    again = applied.apply(PILLAR_EXAMPLE)
    assert again.returncode == 0, again.failed()
    assert again.changed() == {}


def test_test_mode_after_apply_has_nothing_pending(applied: Tree) -> None:
    dry = applied.apply(PILLAR_EXAMPLE, "test=True")
    assert dry.returncode == 0, dry.failed()
    assert dry.pending() == []


def _pillar_with(tmp_path: Path, pattern: str, replacement: str) -> Path:
    text, n = re.subn(pattern, replacement, PILLAR_EXAMPLE.read_text(), count=1, flags=re.M)
    assert n == 1, pattern
    p = tmp_path / "bad.sls"
    p.write_text(text)
    return p


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_bad_config_value_fails_early_naming_the_key(applied: Tree, tmp_path: Path) -> None:
    before = _sha(applied.file("/etc/appliance/appliance.toml"))
    bad = _pillar_with(tmp_path, r"^(\s+)max_message_size: \d+", r"\1max_message_size: '25'")
    run = applied.apply(bad)
    assert run.returncode != 0
    failed = run.failed()
    assert len(failed) == 1, failed
    assert failed[0].startswith("appliance-pillar-valid:")
    assert "pillar appliance:config: key relay.max_message_size: value '25'" in failed[0]
    # failhard: nothing after the check ran, and the working config is untouched.
    ids = [s["__id__"] for s in run.states.values()]
    assert "appliance-config" not in ids and "appliance-unit" not in ids
    assert _sha(applied.file("/etc/appliance/appliance.toml")) == before
    # The pillar kept for re-applying on the box is still the last good one.
    assert applied.file("/opt/appliance/pillar/appliance.sls").read_text() == PILLAR_EXAMPLE.read_text()


def test_bad_formula_value_fails_before_any_state_runs(applied: Tree, tmp_path: Path) -> None:
    bad = _pillar_with(tmp_path, r"^(\s+)mode: self-signed", r"\1mode: acme")
    run = applied.apply(bad)
    assert run.returncode != 0
    assert "pillar appliance:tls:mode: value acme: must be self-signed or certbot" in run.stdout
    with pytest.raises(AssertionError, match="did not compile"):
        _ = run.states
    assert applied.file("/opt/appliance/pillar/appliance.sls").read_text() == PILLAR_EXAMPLE.read_text()
