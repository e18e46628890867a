"""A light idle box (issue 19 item 5): what stays in memory between events, and that behaviour is unchanged.

- the watchdog event listener loads the standard library only;
- the registry_sync service runs each round in a child, so between polls its own
  process has none of the TUF/crypto/pydantic libraries mapped, and it still
  refuses a bad config with exit status 2;
- the watchdog's Prometheus textfile (written without prometheus_client) is
  what prometheus_client's own parser reads back;
- the console loads Jinja2 at its first page, not at start, and still refuses
  to start when Jinja2 is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import tomli_w
from prometheus_client.parser import text_string_to_metric_families

from appliance import supervision, watchdog
from tests.helpers.box import Box

# Shared objects of the libraries a registry round needs; none may stay mapped in the idle service.
HEAVY_OBJECTS = ("cryptography", "pydantic_core", "_cffi_backend", "_ssl")


def test_watchdog_loads_only_the_standard_library() -> None:
    # Only what importing the module adds (not the venv's own start-up hooks), by top-level package.
    code = ("import json, sys; before = set(sys.modules); import appliance.watchdog; "
            "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    third_party = [m for m in json.loads(out) if m != "appliance" and m not in sys.stdlib_module_names]
    assert third_party == []


def test_watchdog_textfile_is_valid_prometheus_exposition(tmp_path: Path) -> None:
    dog = watchdog.Watchdog(tmp_path, rpc=None)
    now = time.time()
    for name, state in (("relay", "RUNNING"), ("access", "FATAL"), ('we"ird\\name', "EXITED")):
        payload = f"processname:{name} groupname:{name} from_state:STARTING expected:0 pid:1\n"
        dog.handle({"eventname": f"PROCESS_STATE_{state}", "len": str(len(payload))}, payload, now)
    text = (tmp_path / watchdog.METRICS_FILE).read_text()
    got = {(f.name, s.labels["service"]): s.value
           for f in text_string_to_metric_families(text) for s in f.samples}
    assert got[("appliance_service_running", "relay")] == 1 and got[("appliance_service_alarm", "relay")] == 0
    assert got[("appliance_service_running", "access")] == 0 and got[("appliance_service_alarm", "access")] == 1
    assert got[("appliance_service_alarm", 'we"ird\\name')] == 1
    assert got[("appliance_service_unexpected_exits", 'we"ird\\name')] == 1
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families == dict.fromkeys(
        ("appliance_service_running", "appliance_service_alarm", "appliance_service_unexpected_exits"), "gauge")


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_registry_sync_keeps_nothing_of_tuf_between_polls_and_still_syncs(running_box: Box) -> None:
    box = running_box
    state = box.cfg.registry_dir / "state.json"
    log = Path(box.cfg.paths.log_dir) / "registry_sync.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ("registry version 1" in (log.read_text() if log.exists() else "")
                                               and state.exists()):
        time.sleep(0.2)
    st = json.loads(state.read_text())
    assert st["version"] == 1 and st["expired"] is False and st["alarm"] is None
    info = supervision.process_info(box.cfg) or {}
    pid = int(info["registry_sync"]["pid"])
    maps = _mapped(pid)
    assert not [lib for lib in HEAVY_OBJECTS if lib in maps], "the idle registry_sync process holds a round's libraries"
    # The watchdog is as light: no shared object of a third-party package at all.
    assert "site-packages" not in _mapped(int(info["watchdog"]["pid"]))


def test_console_loads_jinja2_at_the_first_page_not_at_start(running_box: Box) -> None:
    box = running_box
    pid = int((supervision.process_info(box.cfg) or {})["console"]["pid"])
    # markupsafe's C extension comes with Jinja2: mapped means Jinja2 was imported.
    assert "markupsafe" not in _mapped(pid), "the idle console imported Jinja2 before any page was asked for"
    url = f"https://{box.host('console')}:{box.port('console')}/login"
    with urllib.request.urlopen(url, context=box.client_tls(), timeout=30) as resp:
        page = resp.read().decode()
        assert resp.status == 200
    assert "<form" in page and 'name="password"' in page
    assert "markupsafe" in _mapped(pid)


def test_console_without_jinja2_refuses_to_start(box: Box) -> None:
    # sys.modules[name] = None is how Python marks a package as not importable (find_spec says None).
    code = ("import sys; sys.modules['jinja2'] = None; from services.console.__main__ import main; "
            f"sys.exit(main(['-c', {str(box.config_file)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "console: cannot start: the jinja2 package is not installed" in proc.stderr


def test_registry_sync_service_refuses_a_bad_config_with_status_2(box: Box, tmp_path: Path) -> None:
    data = tomllib.loads(box.config_file.read_text())
    data["registry"]["poll_interval"] = -5
    bad = tmp_path / "bad.toml"
    bad.write_text(tomli_w.dumps(data))
    proc = subprocess.run([sys.executable, "-m", "services.registry_sync", "-c", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "config error" in proc.stderr and "poll_interval" in proc.stderr


def test_relay_reads_the_same_trusted_expiry_as_python_tuf_and_refuses_a_wrong_role(box: Box) -> None:
    from tuf.api.metadata import Metadata

    from appliance.registry.trusted import ROLES, trusted_expiry

    box.cli("registry", "sync", "--once")
    cache = box.cfg.registry_dir / "tuf"
    assert trusted_expiry(cache) == min(Metadata.from_file(str(cache / f"{r}.json")).signed.expires for r in ROLES)
    # A snapshot file where the timestamp should be is not trusted as the timestamp (the relay then refuses members).
    (cache / "timestamp.json").write_bytes((cache / "snapshot.json").read_bytes())
    with pytest.raises(ValueError, match="not timestamp metadata"):
        trusted_expiry(cache)
