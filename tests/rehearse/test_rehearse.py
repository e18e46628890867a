"""`make rehearse`: the README's set-up on a pristine Debian 12 minbase tree, then the peer check inside."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.root
def test_a_fresh_minbase_tree_passes_the_peer_check_after_the_readme_setup() -> None:
    if os.geteuid() != 0:
        pytest.fail("the rehearsal needs root (debootstrap, chroot, mounts): run `make test` as root")
    env = {k: v for k, v in os.environ.items() if k != "PEERCHECK_DROP"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "rehearse.sh")], cwd=REPO, capture_output=True,
                          text=True, timeout=3600, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert re.search(r"^peercheck: all \d+ probes passed$", out, re.M), out[-6000:]
    assert not re.search(r"^peer \S+: ", out, re.M), out[-6000:]
    # The stage times and the download sizes are printed for docs/testing.md.
    assert re.search(r"^rehearse: stages: minbase \d+s source \d+s bootstrap \d+s deps \d+s venv \d+s peers \d+s; total \d+s$",
                     out, re.M), out[-3000:]
    assert re.search(r"^rehearse: downloaded: apt \d+ MB", out, re.M), out[-3000:]
