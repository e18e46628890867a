"""Bad config refused before listening; internal errors answer 451 4.3.0, never 500."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.box import pids_under
from tests.relay_front.conftest import swaks
from tests.relay_front.relay import Relay, make_relay

pytestmark = pytest.mark.peers


def test_bad_config_refused_before_listening(relay: Relay, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(relay.config_file.read_text().replace("[relay]", "[relay]\nmax_mesage_size = 10"))
    proc = subprocess.run([sys.executable, "-m", "services.relay", "-c", str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "relay.max_mesage_size" in lines[0] and "unknown key" in lines[0], proc.stderr


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    r = make_relay(tmp_path_factory.mktemp("faulty"), name="faulty")
    r.start(module="tests.relay_front.faulty_relay")
    yield r
    r.stop()
    assert not pids_under(r.dir), "faulty relay left processes behind"


def test_internal_errors_answer_451(faulty: Relay) -> None:
    out = swaks(faulty, "--from", "alice@example.test", "--to", "explode-rcpt@example.test", check=False)
    assert "451 4.3.0" in out.stdout and "\n<** 500" not in out.stdout and "<~* 500" not in out.stdout
    out = swaks(faulty, "--from", "explode-check@example.test", "--to", "alice@example.test", check=False)
    assert "451 4.3.0" in out.stdout
    out = swaks(faulty, "--from", "alice@example.test", "--to", "alice@example.test", "--header",
                "Subject: explode-data", check=False)
    assert "451 4.3.0" in out.stdout
    # The relay survived all three and still takes mail.
    out = swaks(faulty, "--from", "alice@example.test", "--to", "alice@example.test", check=True)
    assert "250 2.0.0 Ok: queued" in out.stdout
    assert "Traceback" in faulty.log_text()  # the bugs are logged for the operator
