"""The target side of `appliance user move --ssh` (states/appliance/move.sls, pillar fleet:move).

The session's applied tree (pillar.example: no move keys) is checked first; then the pillar
gains two real keys (made by ssh-keygen), the tree is applied again, booted, and one key logs
in with ssh and rsync as the service user; at the end pillar.example is applied again, which
revokes the keys (the tree is left as the other states tests expect it).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require
from tests.states.tree import PILLAR_EXAMPLE, Applied, Tree, booted

pytestmark = [pytest.mark.slow, pytest.mark.root]

KEYS_FILE = "/var/lib/appliance/.ssh/authorized_keys"  # the service user's home is paths.state_dir
MAIL_DIR = "/var/mail/appliance"


def _pillar(path: Path, keys: list[str]) -> Path:
    """pillar.example with appliance:fleet:move:authorized_keys set (its `fleet:` is commented out)."""
    lines = "".join(f"        - {json.dumps(k)}\n" for k in keys)  # JSON strings are YAML strings
    path.write_text(PILLAR_EXAMPLE.read_text() + "  fleet:\n    move:\n      authorized_keys:\n" + lines)
    return path


def _passwd(tree: Tree, user: str) -> list[str]:
    for line in tree.file("/etc/passwd").read_text().splitlines():
        if line.split(":")[0] == user:
            return line.split(":")
    raise AssertionError(f"no {user} in the tree's /etc/passwd")


def _render_error(run: Applied) -> str:
    """The messages of a run that stopped when the states rendered (nothing ran)."""
    data = json.loads(run.stdout)["local"]
    assert isinstance(data, list), "the states compiled"
    return "\n".join(data)


@dataclass
class Moved:
    tree: Tree
    first: Applied
    pillar: Path
    keys: list[Path]  # private keys; KEY.pub is in the pillar


def test_default_pillar_leaves_the_service_user_without_ssh(applied: Tree) -> None:
    assert _passwd(applied, "appliance")[6] == "/usr/sbin/nologin"
    assert not applied.file(KEYS_FILE).exists()


@pytest.mark.parametrize(("key", "why"), [
    ('command="/bin/sh" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB ops@box1', "options"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB ops@box1\nssh-ed25519 AAAAC3Nza x", "newline"),
    ("hello world", "no key type"),
    ("ssh-ed25519", "no key"),
])
def test_a_key_line_that_is_not_a_public_key_is_refused_before_anything_runs(
        applied: Tree, tmp_path: Path, key: str, why: str) -> None:
    run = applied.apply(_pillar(tmp_path / "bad.sls", [key]))
    assert run.returncode != 0, why
    error = _render_error(run)
    assert f"pillar appliance:fleet:move:authorized_keys: value {key[:80]}: not an OpenSSH public key line" in error, why
    assert _passwd(applied, "appliance")[6] == "/usr/sbin/nologin"
    assert not applied.file(KEYS_FILE).exists()


def test_a_mail_dir_that_cannot_go_into_the_rrsync_command_is_refused(applied: Tree, tmp_path: Path) -> None:
    pillar = _pillar(tmp_path / "bad.sls", ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB ops@box1"])
    text = pillar.read_text()
    assert text.count("\n  config:\n") == 1
    pillar.write_text(text.replace("\n  config:\n", '\n  config:\n    paths:\n      mail_dir: \'/var/mail/a",no-restrict\'\n'))
    run = applied.apply(pillar)
    assert run.returncode != 0
    assert 'pillar appliance:config:paths:mail_dir: value /var/mail/a",no-restrict: with fleet:move' in _render_error(run)
    assert not applied.file(KEYS_FILE).exists()


@pytest.fixture(scope="module")
def moved(applied: Tree, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moved]:
    require("ssh-keygen")
    d = tmp_path_factory.mktemp("move-keys")
    keys = []
    for name, kind in (("box1", "ed25519"), ("box2", "ecdsa")):
        k = d / name
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"appliance-move@{name}", "-f", str(k)],
                       check=True)
        keys.append(k)
    pillar = _pillar(d / "move.sls", [Path(f"{k}.pub").read_text().strip() for k in keys])
    yield Moved(applied, applied.apply(pillar), pillar, keys)


def test_keys_in_the_pillar_give_the_service_user_rrsync_only_logins(moved: Moved) -> None:
    tree, first = moved.tree, moved.first
    assert first.returncode == 0, first.failed() or first.stderr[-3000:]
    assert {"appliance-move-packages", "appliance-move-authorized-keys", "appliance-user"} <= set(first.changed())
    pw = _passwd(tree, "appliance")
    assert pw[6] == "/bin/sh"  # sshd runs the forced command through the login shell
    f = tree.file(KEYS_FILE)
    lines = [ln for ln in f.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == [f'command="/usr/bin/rrsync {MAIL_DIR}",restrict {Path(f"{k}.pub").read_text().strip()}'
                     for k in moved.keys]
    st = f.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (int(pw[2]), int(pw[3]))
    d = f.parent.stat()
    assert stat.S_IMODE(d.st_mode) == 0o700 and d.st_uid == int(pw[2])
    assert tree.file("/usr/bin/rrsync").exists() and tree.file("/usr/sbin/sshd").exists()
    enabled = subprocess.run(["chroot", str(tree.path), "systemctl", "is-enabled", "ssh.service"],
                             capture_output=True, text=True)
    assert enabled.stdout.strip() == "enabled"
    # The firewall already lets SSH in (firewall:ssh_port; ssh_sources empty: from anywhere).
    assert "tcp dport 22 accept" in tree.file("/etc/nftables.conf").read_text()
    again = tree.apply(moved.pillar)
    assert again.returncode == 0, again.failed()
    assert again.changed() == {}


def test_a_move_key_writes_into_the_mail_dir_as_the_service_user_and_runs_nothing_else(
        moved: Moved, tmp_path: Path) -> None:
    assert moved.first.returncode == 0
    key_dir = moved.keys[0].parent
    ssh = f"ssh -i /keys/{moved.keys[0].name} -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
    with booted(moved.tree.path, tmp_path / "boot.log", nspawn_args=(f"--bind-ro={key_dir}:/keys",)) as c:
        for _ in range(60):  # sshd is started by the boot; bounded wait for its socket
            if c.run("systemctl", "is-active", "ssh.service").stdout.strip() == "active":
                break
            c.run("sleep", "0.5")
        else:
            raise AssertionError(c.run("systemctl", "status", "ssh.service").stdout)
        c.run("sh", "-c", "echo probe > /root/probe", check=True)
        put = c.run("rsync", "-e", ssh, "/root/probe", "appliance@127.0.0.1:example.org-probe")
        assert put.returncode == 0, put.stderr
        owner = c.run("stat", "-c", "%U %a", f"{MAIL_DIR}/example.org-probe", check=True).stdout.split()
        assert owner[0] == "appliance"
        listed = c.run("rsync", "-e", ssh, "--list-only", "appliance@127.0.0.1:")
        assert listed.returncode == 0 and "example.org-probe" in listed.stdout, listed.stderr
        # Outside the mail dir: rrsync roots an absolute path in it and refuses `..`.
        c.run("rsync", "-e", ssh, "/root/probe", "appliance@127.0.0.1:/etc/escaped")
        assert c.run("test", "-e", "/etc/escaped").returncode != 0
        up = c.run("rsync", "-e", ssh, "/root/probe", "appliance@127.0.0.1:../escaped")
        assert up.returncode != 0 and c.run("test", "-e", "/var/mail/escaped").returncode != 0
        # Any other command is refused by rrsync, not run by the shell.
        shell = c.run(*ssh.split(), "appliance@127.0.0.1", "touch /var/mail/appliance/by-shell")
        assert shell.returncode != 0
        assert c.run("test", "-e", f"{MAIL_DIR}/by-shell").returncode != 0


def test_taking_the_keys_out_of_the_pillar_revokes_them(moved: Moved) -> None:
    back = moved.tree.apply(PILLAR_EXAMPLE)
    assert back.returncode == 0, back.failed()
    assert _passwd(moved.tree, "appliance")[6] == "/usr/sbin/nologin"
    assert not moved.tree.file(KEYS_FILE).exists()
    assert os.path.isdir(moved.tree.file(MAIL_DIR))
