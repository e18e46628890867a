"""A development box in a temp dir, run for real under supervisor, torn down without leaks."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config import Config, load
from appliance.mailstore import maildir_path

APPLIANCE = [sys.executable, "-m", "appliance"]


def run_cli(config: Path | None, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [*APPLIANCE, *(["-c", str(config)] if config else []), *args]
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError as exc:
            last = exc
            time.sleep(0.1)
    raise TimeoutError(f"{host}:{port} not listening after {timeout}s: {last}")


@dataclass
class Box:
    dir: Path
    config_file: Path
    domain: str
    passwords: dict[str, str] = field(default_factory=dict)
    running: bool = False

    @property
    def cfg(self) -> Config:
        return load(self.config_file)

    def port(self, name: str) -> int:
        return int(getattr(self.cfg.listeners, name).port)

    def host(self, name: str) -> str:
        return str(getattr(self.cfg.listeners, name).host)

    def cli(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return run_cli(self.config_file, *args, **kw)

    def add_user(self, local: str, password: str = "correct horse battery") -> str:
        address = f"{local}@{self.domain}"
        self.cli("user", "add", address, "--password-stdin", input=password + "\n")
        self.passwords[address] = password
        return address

    def up(self, wait_endpoints: bool = True) -> None:
        self.cli("up")
        self.running = True
        if wait_endpoints:
            from appliance.catalog import built_services

            cfg = self.cfg
            for spec in built_services():
                for name in spec.endpoints:
                    lst = getattr(cfg.listeners, name)
                    if lst.enabled:
                        wait_port(lst.host, lst.port)

    def down(self) -> None:
        self.cli("down", check=False)
        self.running = False

    def status(self) -> dict[str, Any]:
        # Exit status 1 means "a service is not running" (docs/status.md); the JSON is the answer here.
        return json.loads(self.cli("status", "--json", check=False).stdout)

    def maildir(self, address: str, folder: str = "") -> Path:
        base = maildir_path(self.cfg.paths.mail_dir, address)
        return base / f".{folder}" if folder else base

    def client_tls(self) -> ssl.SSLContext:
        """A client context that trusts this box's self-signed certificate."""
        ctx = ssl.create_default_context(cafile=self.cfg.tls.cert)
        ctx.check_hostname = False
        return ctx


def make_box(tmp: Path, domain: str = "example.test", host: str = "127.0.0.1", name: str = "dev") -> Box:
    d = tmp / name
    run_cli(None, "init", "--dev", str(d), "--domain", domain, "--base-port", "0", "--host", host)
    return Box(d, d / "appliance.toml", domain)


def pids_under(path: Path) -> list[int]:
    """Processes whose command line mentions PATH (leak check)."""
    out = []
    needle = str(path).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    out.append(int(entry.name))
            except OSError:
                continue
    return out
