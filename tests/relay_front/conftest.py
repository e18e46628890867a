"""Fixtures of the relay front-end tests: one relay for the package, real clients against it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.box import pids_under
from tests.relay_front.relay import PASSWORD, Relay, make_relay

MAX_SIZE = 20_000
MAX_RCPTS = 5


@pytest.fixture(scope="package")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    missing = [t for t in ("swaks",) if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing test peers {missing}: run `make test` (it installs them)")
    # RUN_DIR outside pytest's private (0700) temp dir, so a client running as
    # `nobody` can reach the internal socket and be refused by SO_PEERCRED, not by the file system.
    run_dir = Path(tempfile.mkdtemp(prefix="relay-front-run-"))
    run_dir.chmod(0o755)
    r = make_relay(
        tmp_path_factory.mktemp("relay"),
        relay={"max_message_size": MAX_SIZE, "max_recipients": MAX_RCPTS, "internal_allowed_uids": [0]},
        paths={"run_dir": str(run_dir)},
    )
    r.start()
    yield r
    r.stop()
    shutil.rmtree(run_dir, ignore_errors=True)
    leaked = pids_under(r.dir)
    assert not leaked, f"processes left behind: {leaked}"


def swaks(relay: Relay, *args: str, listener: str = "submission", auth: bool = True, tls: str | None = "--tls",
          user: str = "alice@example.test", password: str = PASSWORD, check: bool | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run swaks against LISTENER; CHECK True/False asserts its exit status."""
    cmd = ["swaks", "--server", relay.server(listener), "--timeout", "20"]
    if tls:
        cmd.append(tls)
    if auth:
        cmd += ["--auth", "PLAIN", "--auth-user", user, "--auth-password", password]
    cmd += list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if check is True:
        assert proc.returncode == 0, out
    elif check is False:
        assert proc.returncode != 0, out
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.replace("\n", "\r\n").encode())
    return path
