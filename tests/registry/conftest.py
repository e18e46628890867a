"""A consortium registry (operator directory made with the CLI) and a dev box pointed at it."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from appliance.cli import main as cli_main
from tests.helpers.box import Box, run_cli, wait_port


@dataclass
class Operator:
    repo_dir: Path
    keys_dir: Path

    @property
    def public(self) -> Path:
        return self.repo_dir / "public"

    @property
    def pinned_root(self) -> Path:
        return self.public / "metadata" / "1.root.json"

    def cli(self, action: str, *args: str, check: bool = True) -> tuple[int, str, str]:
        """`appliance registry ACTION REPO_DIR ARGS`, run in this process (the same code, without a
        Python start-up per call: the operator side is not what these tests time)."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli_main(["registry", action, str(self.repo_dir), *args])
        if check and rc != 0:
            raise AssertionError(f"registry {action} {' '.join(args)} exited {rc}: {err.getvalue()}")
        return rc, out.getvalue(), err.getvalue()

    def draft(self) -> dict[str, Any]:
        return json.loads((self.repo_dir / "registry.json").read_text())


def sync_in_process(box: Box) -> tuple[int, str, str]:
    """`appliance -c CONFIG registry sync --once` in this process (where the subprocess start-up is not the point)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(["-c", str(box.config_file), "registry", "sync", "--once"])
    return rc, out.getvalue(), err.getvalue()


def make_operator(tmp: Path, *init_args: str) -> Operator:
    op = Operator(tmp / "consortium", tmp / "consortium-keys")
    run_cli(None, "registry", "init", str(op.repo_dir), "--keys-dir", str(op.keys_dir),
            "--consortium", "Test consortium", *init_args)
    return op


def point_box(box: Box, url: str, root: Path, **registry: Any) -> None:
    """Make BOX trust the registry at URL with pinned ROOT (what a member's operator does in the config)."""
    data = tomllib.loads(box.config_file.read_text())
    data["registry"].update({"url": url, "root": str(root), **registry})
    box.config_file.write_text(tomli_w.dumps(data))


def add_box_member(op: Operator, box: Box, member_id: str | None = None) -> str:
    cfg = box.cfg
    mid = member_id or cfg.box.member_id
    host = cfg.listeners.mx.host
    op.cli("add-member", "--without-probe", "--id", mid, "--domain", cfg.box.domains[0],
           "--relay", f"{host}:{cfg.listeners.mx.port}={host}/32")
    return mid


@pytest.fixture
def operator(tmp_path: Path) -> Operator:
    """Root 2 of 3 and targets 2 of 2, so 'fewer signatures than the threshold' can be shown."""
    return make_operator(tmp_path, "--keys", "targets=2", "--threshold", "targets=2")


@pytest.fixture
def member_box(box: Box, operator: Operator) -> Iterator[Box]:
    """A dev box that is a member of OPERATOR's consortium and has synced once."""
    add_box_member(operator, box)
    operator.cli("add-member", "--without-probe", "--id", "other", "--domain", "other.test", "--relay", "mx.other.test=192.0.2.10")
    operator.cli("publish")
    point_box(box, operator.public.as_uri(), operator.pinned_root)
    rc, _, err = sync_in_process(box)
    assert rc == 0, err
    yield box


def swaks(box: Box, source: str, rcpt: str, *extra: str) -> str:
    """An SMTP client on port 25 of BOX, connecting from SOURCE (a loopback address)."""
    cfg = box.cfg
    proc = subprocess.run(
        ["swaks", "--server", f"{cfg.listeners.mx.host}:{cfg.listeners.mx.port}", "--local-interface", source,
         "--from", "sender@member.test", "--to", rcpt, "--timeout", "30", *extra],
        capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr


def greeting_verdict(box: Box, source: str, rcpt: str) -> str:
    """'accepted' (RCPT got 250), or the refusal code the relay answered with."""
    out = swaks(box, source, rcpt, "--quit-after", "RCPT")
    if "<-  250 2.1.5" in out:
        return "accepted"
    for code in ("554 5.7.1", "421 4.7.0", "421 4.7.1"):
        if f"<** {code}" in out:
            return code
    return out


@contextlib.contextmanager
def relay_running(box: Box, up: bool = True) -> Iterator[None]:
    """BOX's services running: `appliance up` (agent and relay). UP=False starts the relay alone,
    so the test drives every sync itself."""
    proc = None
    if up:
        box.up()
    try:
        if not up:
            log = open(box.dir / "relay-test.log", "ab")
            proc = subprocess.Popen([sys.executable, "-m", "services.relay", "-c", str(box.config_file)],
                                    stdout=log, stderr=subprocess.STDOUT)
            log.close()
        cfg = box.cfg
        wait_port(cfg.listeners.mx.host, cfg.listeners.mx.port)
        yield
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        if up:
            box.down()
