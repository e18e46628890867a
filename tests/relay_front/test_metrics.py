"""The relay's Prometheus metrics, read with curl."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.relay_front.conftest import swaks
from tests.relay_front.relay import Relay

pytestmark = pytest.mark.peers


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


def test_metrics_count_accepts_and_refusals(relay: Relay) -> None:
    assert shutil.which("curl"), "curl is a test peer"
    url = f"http://127.0.0.1:{relay.port('metrics')}/metrics"

    def scrape() -> str:
        return subprocess.run(["curl", "-sf", url], capture_output=True, text=True, timeout=30, check=True).stdout

    before = scrape()
    swaks(relay, "--from", "alice@example.test", "--to", "alice@example.test", check=True)
    swaks(relay, "--from", "bob@example.test", "--to", "alice@example.test", check=False)
    after = scrape()
    accepted = "relay_messages_accepted_total"
    assert _metric(after, accepted, listener="submission") == _metric(before, accepted, listener="submission") + 1
    refused = "relay_policy_verdicts_total"
    labels = {"listener": "submission", "stage": "mail", "origin": "sender_identity", "code": "550"}
    assert _metric(after, refused, **labels) == _metric(before, refused, **labels) + 1
    assert _metric(after, "relay_auth_total", result="ok") >= 2
    assert "relay_data_to_reply_seconds_bucket" in after
