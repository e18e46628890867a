"""Services never stay down silently: real supervisord, real watchdog event listener.

- a program that keeps failing to start goes FATAL (supervisor gives up), and the
  watchdog starts it again, with a growing delay, until it runs: no human needed;
- a program that keeps crashing after it started is reported as flapping;
- on a box, a service that is not RUNNING is an ALARM in `appliance status`,
  which then exits non-zero.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from supervisor.xmlrpc import SupervisorTransport

from appliance import supervision, watchdog
from tests.helpers.box import Box, make_box, pids_under, run_cli
from tests.helpers.wait import wait_for


class Supervisord:
    def __init__(self, d: Path, programs: dict[str, str]) -> None:
        self.dir, self.sock = d, d / "supervisor.sock"
        lines = [
            "[unix_http_server]", f"file={self.sock}", "chmod=0700", "",
            "[supervisord]", f"logfile={d}/supervisord.log", f"pidfile={d}/supervisord.pid", f"childlogdir={d}",
            f"directory={d}", "",
            "[rpcinterface:supervisor]", "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
        ]
        for name, command in programs.items():
            # The box's own program section, with fewer retries so the test reaches FATAL quickly.
            lines += supervision.program_section(name, command, str(d), startretries=1, startsecs=1)
        lines += supervision.watchdog_section(str(d), str(d), retry_min=1, retry_max=2)
        self.conf = d / "supervisord.conf"
        self.conf.write_text("\n".join(lines))
        subprocess.run([str(Path(sys.executable).parent / "supervisord"), "-c", str(self.conf)], check=True)
        self.rpc: Any = xmlrpc.client.ServerProxy(
            "http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{self.sock}"))
        wait_for("supervisord", lambda: self.sock.exists(), 20)

    def state(self, name: str) -> str:
        return str(self.rpc.supervisor.getProcessInfo(name)["statename"])

    def dog(self, name: str) -> dict[str, Any] | None:
        st = watchdog.read_state(self.dir)
        return st["programs"].get(name) if st else None

    def shutdown(self) -> None:
        pid = int((self.dir / "supervisord.pid").read_text())
        self.rpc.supervisor.shutdown()
        wait_for("supervisord to exit", lambda: not Path(f"/proc/{pid}").exists(), 60)


@pytest.fixture
def sup_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    leaked = pids_under(tmp_path)
    assert not leaked, f"processes left behind: {leaked}"


def test_fatal_program_is_restarted_until_it_runs(sup_dir: Path) -> None:
    ready = sup_dir / "ready"
    # Fails at once until READY exists (a missing file, a dependency down...), then stays up.
    flaky = f"{sys.executable} -c \"import os,sys,time; os.path.exists('{ready}') or sys.exit(3); time.sleep(600)\""
    s = Supervisord(sup_dir, {"flaky": flaky})
    try:
        wait_for("supervisor to give up (FATAL)", lambda: s.state("flaky") == "FATAL", 60)
        # The watchdog handles supervisor's events in order, so it may still be reporting BACKOFF.
        seen = wait_for("the watchdog to report the FATAL alarm",
                        lambda: "FATAL" in ((s.dog("flaky") or {}).get("alarm") or "") and s.dog("flaky")["alarm"], 30)
        assert "FATAL" in seen
        prom = (sup_dir / watchdog.METRICS_FILE).read_text()
        assert 'appliance_service_alarm{service="flaky"} 1.0' in prom
        # Supervisor alone would leave it FATAL for good; the watchdog starts it again, repeatedly.
        wait_for("two watchdog restarts", lambda: (s.dog("flaky") or {}).get("watchdog_restarts", 0) >= 2, 60)
        ready.touch()  # the cause is fixed: the next retry must bring it up with no human action
        wait_for("flaky RUNNING", lambda: s.state("flaky") == "RUNNING", 60)
        wait_for("the alarm to clear", lambda: (s.dog("flaky") or {}).get("state") == "RUNNING", 30)
        assert (s.dog("flaky") or {}).get("next_retry") is None
    finally:
        s.shutdown()


def test_program_crashing_after_start_is_flapping(sup_dir: Path) -> None:
    crashy = f"{sys.executable} -c \"import sys,time; time.sleep(1.3); sys.exit(1)\""
    s = Supervisord(sup_dir, {"crashy": crashy})
    try:
        alarm = wait_for("flapping", lambda: (s.dog("crashy") or {}).get("flapping") and s.dog("crashy")["alarm"], 60)
        assert "flapping" in alarm
        prom = (sup_dir / watchdog.METRICS_FILE).read_text()
        assert 'appliance_service_alarm{service="crashy"} 1.0' in prom
    finally:
        s.shutdown()


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    b = make_box(tmp_path)
    yield b
    b.down()
    assert pids_under(b.dir) == []


def test_status_alarms_and_exits_nonzero_when_a_service_is_not_running(box: Box) -> None:
    assert run_cli(box.config_file, "status", check=False).returncode == 1  # nothing runs yet
    box.up()
    ok = wait_for("status exit 0", lambda: (p := run_cli(box.config_file, "status", "--json", check=False))
                  .returncode == 0 and p, 60)
    st = json.loads(ok.stdout)
    assert all(s["alarm"] is None for s in st["services"]) and st["watchdog"]["state"] == "running"
    ctl = [str(Path(sys.executable).parent / "supervisorctl"), "-c", str(supervision.conf_path(box.cfg))]
    subprocess.run([*ctl, "stop", "access"], check=True, capture_output=True)
    proc = run_cli(box.config_file, "status", check=False)
    assert proc.returncode == 1
    line = next(line for line in proc.stdout.splitlines() if line.strip().startswith("access"))
    assert "stopped" in line and "ALARM" in line
    st = json.loads(run_cli(box.config_file, "status", "--json", check=False).stdout)
    assert next(s for s in st["services"] if s["name"] == "access")["alarm"]
    # The relay's /metrics shows it too (the watchdog's report, read at each scrape).
    m = box.cfg.listeners.metrics
    url = f"http://{m.host}:{m.port}/metrics"

    def scrape() -> str | None:
        t = urllib.request.urlopen(url, timeout=10).read().decode()
        return t if 'appliance_service_alarm{service="access"} 1.0' in t else None

    text = wait_for("the alarm in /metrics", scrape, 30)
    assert 'appliance_service_alarm{service="relay"} 0.0' in text
    assert 'appliance_service_running{service="access"} 0.0' in text
