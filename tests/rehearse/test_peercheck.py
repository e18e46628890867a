"""The peer check as `make test` runs it first: one line per gap, naming the Debian package."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PEERCHECK = REPO / "scripts" / "peercheck.py"


def peercheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/usr/bin/python3", str(PEERCHECK), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_make_deps_debian_installs_exactly_the_catalogue() -> None:
    listed = peercheck("--packages").stdout.split()
    assert {"swaks", "libnet-ssleay-perl", "vagrant", "vagrant-libvirt"} <= set(listed)
    assert len(listed) == len(set(listed))
    dump = subprocess.run(["make", "-pn", "deps-debian"], cwd=REPO, capture_output=True, text=True, timeout=120)
    line = next(m for m in re.finditer(r"^DEBIAN_TEST_PEERS :?= (.*)$", dump.stdout, re.M))
    assert line.group(1).split() == listed


def test_dropping_a_package_leaves_it_out_of_the_list() -> None:
    listed = peercheck("--packages", env={"PEERCHECK_DROP": "libnet-ssleay-perl,tmux"}).stdout.split()
    assert "libnet-ssleay-perl" not in listed and "tmux" not in listed and "swaks" in listed


def test_every_peer_of_this_machine_passes() -> None:
    # `make test` installed the list, so every capability the tests use must be there.
    proc = peercheck()
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^peercheck: all \d+ probes passed$", proc.stdout, re.M)


def test_a_missing_peer_is_one_line_naming_its_package(tmp_path: Path) -> None:
    # This machine's PATH with swaks taken out: every other binary is the real one.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            link = bindir / name
            if name != "swaks" and not link.exists() and os.access(os.path.join(d, name), os.X_OK):
                link.symlink_to(os.path.join(d, name))
    proc = peercheck(env={"PATH": str(bindir)})
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0] == "peer swaks: swaks not found -> apt-get install swaks"
    assert re.fullmatch(r"peercheck: 1 of \d+ probes failed; .*", lines[1])
    assert len(lines) == 2
