"""Doctor's checks of the box itself: the clock against a registry server whose clock is off,
a nearly full spool file system (a real small tmpfs in a private mount namespace), and a box
with no registry on disk."""

from __future__ import annotations

import email.utils
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from appliance.config import Config, load
from appliance.doctor.local import check_clock, check_registry

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config_file(dev_config: Path) -> Path:
    return dev_config


def variant(config_file: Path, tmp_path: Path, section: str, **values: object) -> Path:
    data = tomllib.loads(config_file.read_text())
    data.setdefault(section, {}).update(values)
    p = tmp_path / f"{section}.toml"
    p.write_text(tomli_w.dumps(data))
    return p


class SkewedServer(http.server.ThreadingHTTPServer):
    skew = 0.0  # seconds this server's clock is ahead of ours


class SkewedHandler(http.server.BaseHTTPRequestHandler):
    """An HTTP server whose clock is off by ``server.skew``: its Date header (RFC 9110 6.6.1) says so."""

    def date_time_string(self, timestamp: float | None = None) -> str:
        return email.utils.formatdate(time.time() + self.server.skew, usegmt=True)  # type: ignore[attr-defined]

    def do_HEAD(self) -> None:
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def skewed() -> Iterator[SkewedServer]:
    server = SkewedServer(("127.0.0.1", 0), SkewedHandler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()
    t.join(timeout=10)


def clock_of(config_file: Path, tmp_path: Path, server: SkewedServer) -> tuple[str, str]:
    cfg: Config = load(variant(config_file, tmp_path, "registry", url=f"http://127.0.0.1:{server.server_port}/"))
    [f] = check_clock(cfg)
    return f.level, f.summary


@pytest.mark.parametrize("skew, level", [(0, "ok"), (-120, "warning"), (+120, "warning"), (+900, "error"),
                                         (-3600, "error")])
def test_clock_against_the_registry_servers_date(config_file: Path, tmp_path: Path, skewed: SkewedServer,
                                                 skew: float, level: str) -> None:
    skewed.skew = skew
    got, summary = clock_of(config_file, tmp_path, skewed)
    assert got == level, summary
    if skew:
        # Which way to correct: this box is behind a server that is ahead.
        assert ("behind" if skew > 0 else "ahead of") in summary, summary


def test_no_registry_on_disk_is_an_error(config_file: Path, tmp_path: Path) -> None:
    empty = tmp_path / "no-registry"
    empty.mkdir()
    [f] = check_registry(load(variant(config_file, tmp_path, "registry", dir=str(empty))))
    assert f.level == "error" and "no registry on disk" in f.summary and "registry_sync" in f.fix


def test_dev_box_registry_is_fresh(config_file: Path) -> None:
    [f] = check_registry(load(config_file))
    assert f.level == "ok" and "version" in f.summary


def test_nearly_full_spool_file_system_is_an_error(config_file: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("needs root and util-linux unshare (a private mount namespace for a small tmpfs)")
    small = tmp_path / "small"
    small.mkdir()
    cfg_file = variant(config_file, tmp_path, "paths", spool_dir=str(small))
    # 8 MiB: less than reserve + relay.max_message_size (25 MiB), so the next large message is refused.
    script = (f"mount -t tmpfs -o size=8m tmpfs {small} && "
              f"exec {sys.executable} -m appliance -c {cfg_file} doctor --json")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], capture_output=True,
                       text=True, cwd=REPO_ROOT, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    disk = {f["check"]: f for f in json.loads(r.stdout)}["disk paths.spool_dir"]
    assert disk["level"] == "error" and "new mail is refused" in disk["summary"]
    assert "free of 8.0 MiB" in disk["summary"], disk
    # The tmpfs lived only in the child's mount namespace.
    assert not os.path.ismount(small)
