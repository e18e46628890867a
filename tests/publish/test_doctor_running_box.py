"""Doctor on a running development box (`appliance up`): every listener answers as its protocol
should, STARTTLS included, and the console serves the box's MTA-STS policy."""

from __future__ import annotations

import json

from tests.helpers.box import Box, run_cli

STARTTLS = ("mx", "submission", "imap", "pop3")


def test_every_listener_of_a_running_box_answers(running_box: Box) -> None:
    r = run_cli(running_box.config_file, "doctor", "--json", check=False)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    found = {f["check"]: f for f in json.loads(r.stdout)}
    listeners = {k.split()[1]: f for k, f in found.items() if k.startswith("listener ")}
    enabled = {name for name in type(running_box.cfg.listeners).model_fields
               if getattr(running_box.cfg.listeners, name).enabled}
    assert set(listeners) == enabled
    assert all(f["level"] == "ok" for f in listeners.values()), listeners
    for name in STARTTLS:
        assert "STARTTLS works" in listeners[name]["summary"], listeners[name]
    assert found["mta-sts policy example.test"]["level"] == "ok"
    # The dev box has no DNS for example.test: warnings only, so doctor passes.
    assert [f for f in found.values() if f["level"] == "error"] == []
    assert r.returncode == 0


def test_a_stopped_box_is_an_error(box: Box) -> None:
    r = run_cli(box.config_file, "doctor", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ERROR   listener imaps: access imaps at 127.0.0.1:" in r.stdout
    assert "cannot connect" in r.stdout
