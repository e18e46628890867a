"""Config: a bad file is refused with one line naming file, key, value and reason (exit 2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.config import ConfigError, load, reference_markdown
from tests.helpers.box import Box, run_cli

ROOT = Path(__file__).resolve().parent.parent


def _edit(box: Box, old: str, new: str) -> None:
    text = box.config_file.read_text()
    assert old in text
    box.config_file.write_text(text.replace(old, new, 1))


def test_dev_config_loads(box: Box) -> None:
    cfg = load(box.config_file)
    assert cfg.box.domains == ["example.test"]
    assert cfg.paths.state_dir.startswith(str(box.dir))


@pytest.mark.parametrize(
    "old,new,key,fragment",
    [
        ("[relay]\n", '[relay]\nmax_recipients = "many"\n', "relay.max_recipients", "'many'"),
        ("[relay]\n", "[relay]\nmax_recipient = 5\n", "relay.max_recipient", "unknown key"),
        ('role = "member"', 'role = "hub"', "box.role", "'hub'"),
        ("[relay]\n", "[relay]\nmax_message_size = -1\n", "relay.max_message_size", "-1"),
        # HOST:PORT keys (appliance/hostport.py): a `_` in a host name is refused, naming the key.
        ("[relay]\n", '[fleet.boxes.b]\nrelay = "mx_b.test:25"\naccess = "[::1]:993"\n\n[relay]\n',
         "fleet.boxes.b.relay", "'mx_b.test' is not a host name"),
        ("[relay]\n", '[fleet.boxes.b]\nrelay = "mx.b.test:25"\naccess = "[::1]x:993"\n\n[relay]\n',
         "fleet.boxes.b.access", "after ']'"),
        # IP address lists: one validator, the bad entry named.
        ("[relay]\n", '[publish]\naddresses = ["192.0.2.1", "192.0.2.300"]\n\n[relay]\n',
         "publish.addresses", "'192.0.2.300' is not an IP address"),
        ("[relay]\n", '[relay.resolver]\nnameservers = ["::1", "ns1"]\n\n[relay]\n',
         "relay.resolver.nameservers", "'ns1' is not an IP address"),
    ],
)
def test_bad_value_refused_with_key(box: Box, old: str, new: str, key: str, fragment: str) -> None:
    _edit(box, old, new)
    proc = run_cli(box.config_file, "status", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(box.config_file) in lines[0] and f"key {key}" in lines[0] and fragment in lines[0]


def test_up_refuses_bad_config_before_listening(box: Box) -> None:
    _edit(box, "[relay]\n", "[relay]\nbogus = 1\n")
    proc = run_cli(box.config_file, "up", check=False)
    assert proc.returncode == 2 and "relay.bogus" in proc.stderr
    assert not (box.dir / "run" / "supervisord.pid").exists()


def test_port_as_string_refused(box: Box) -> None:
    text = box.config_file.read_text()
    text = re.sub(r"(\[listeners\.mx\][^\[]*port = )(\d+)", r'\1"\2"', text)
    box.config_file.write_text(text)
    with pytest.raises(ConfigError, match=r"key listeners\.mx\.port"):
        load(box.config_file)


def test_edge_without_upstream_refused(box: Box) -> None:
    _edit(box, 'role = "member"', 'role = "edge"')
    with pytest.raises(ConfigError, match=r"key relay\.upstream: required"):
        load(box.config_file)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[box\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)


def test_reference_doc_is_current() -> None:
    assert (ROOT / "docs/configuration.md").read_text() == reference_markdown()


def test_config_check_command(box: Box) -> None:
    proc = box.cli("config", "check", check=False)
    assert proc.returncode == 0 and "ok" in proc.stdout
