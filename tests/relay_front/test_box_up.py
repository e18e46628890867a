"""`appliance up` runs the relay under supervisor: a customer's mail reaches the local Maildir."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from tests.helpers.box import Box

pytestmark = pytest.mark.peers


def test_appliance_up_runs_relay(running_box: Box) -> None:
    box = running_box
    status = box.status()
    relay = next(s for s in status["services"] if s["name"] == "relay")
    assert relay["state"] == "running", status
    marker = uuid.uuid4().hex
    out = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{box.port('submission')}", "--tls", "--auth", "PLAIN",
         "--auth-user", "alice@example.test", "--auth-password", box.passwords["alice@example.test"],
         "--from", "alice@example.test", "--to", "alice@example.test", "--header", f"Subject: {marker}"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    new = box.maildir("alice@example.test") / "new"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if new.exists() and any(marker.encode() in p.read_bytes() for p in new.iterdir()):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"message {marker} not delivered to {new}")
