"""A relay process on a development box, started directly (no supervisor) for the front-end tests."""

from __future__ import annotations

import base64
import functools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from appliance.accounts import AccountStore
from appliance.config import Config, load
from tests.helpers.box import make_box, wait_port

PASSWORD = "correct horse battery"


@dataclass
class Relay:
    dir: Path
    config_file: Path
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)

    @functools.cached_property
    def cfg(self) -> Config:
        # Loaded once: the file does not change after make_relay, and polling loops read it often.
        return load(self.config_file)

    def port(self, name: str) -> int:
        return int(getattr(self.cfg.listeners, name).port)

    def server(self, name: str) -> str:
        return f"127.0.0.1:{self.port(name)}"

    @property
    def registry_file(self) -> Path:
        return self.cfg.registry_dir / "registry.json"

    def maildir_new(self, address: str) -> Path:
        local, domain = address.split("@")
        return Path(self.cfg.paths.mail_dir) / domain / local / "new"

    def delivered(self, address: str) -> list[Path]:
        d = self.maildir_new(address)
        return sorted(d.iterdir()) if d.exists() else []

    def wait_delivered(self, address: str, count: int, timeout: float = 20) -> list[Path]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            files = self.delivered(address)
            if len(files) >= count:
                return files
            time.sleep(0.05)
        raise AssertionError(f"{address}: {len(self.delivered(address))} messages delivered, expected {count}")

    def find_delivered(self, address: str, marker: bytes, timeout: float = 20) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.delivered(address):
                data = p.read_bytes()
                if marker in data:
                    return data
            time.sleep(0.05)
        raise AssertionError(f"no message with {marker!r} delivered to {address}")

    def start(self, module: str = "services.relay") -> None:
        self.log = self.dir / "relay-test.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, "-c", str(self.config_file)], stdout=out, stderr=subprocess.STDOUT,
                cwd=str(Path(__file__).resolve().parents[2]),
            )
        cfg = self.cfg
        for name in ("mx", "submission", "submissions"):
            wait_port("127.0.0.1", getattr(cfg.listeners, name).port)
        deadline = time.monotonic() + 10
        while not cfg.paths.internal_socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def write_registry(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Apply CHANGE to registry.json (written atomically); return the old content."""
        old = json.loads(self.registry_file.read_text())
        new = json.loads(json.dumps(old))
        change(new)
        tmp = self.registry_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(new))
        os.replace(tmp, self.registry_file)
        return old

    def restore_registry(self, old: dict[str, Any]) -> None:
        self.write_registry(lambda d: (d.clear(), d.update(old)))


def make_relay(tmp: Path, name: str = "front", relay: dict[str, Any] | None = None,
               paths: dict[str, str] | None = None) -> Relay:
    box = make_box(tmp, name=name)
    data = tomllib.loads(box.config_file.read_text())
    data["relay"].update(relay or {})
    data["paths"].update(paths or {})
    box.config_file.write_text(tomli_w.dumps(data))
    cfg = load(box.config_file)
    store = AccountStore(cfg.paths.accounts_db)
    try:
        store.add("alice@example.test", PASSWORD)
        store.add_alias("alice@example.test", "sales@example.test")
        store.add("bob@example.test", PASSWORD)
    finally:
        store.close()
    return Relay(box.dir, box.config_file)


def client_tls(relay: Relay, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    """A client context trusting the box's self-signed certificate, optionally presenting CERT (cert, key)."""
    ctx = ssl.create_default_context(cafile=relay.cfg.tls.cert)
    ctx.check_hostname = False
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


AUTH_PLAIN_ALICE = "AUTH PLAIN " + base64.b64encode(f"\0alice@example.test\0{PASSWORD}".encode()).decode()


def free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RawSMTP:
    """A byte-exact SMTP client for what swaks cannot send (smuggling, injection, odd addresses)."""

    def __init__(self, host: str, port: int, source: str | None = None, timeout: float = 20) -> None:
        self.sock: Any = socket.create_connection((host, port), timeout=timeout,
                                                  source_address=(source, 0) if source else None)
        self.buf = b""
        self.greeting = self.reply()

    @classmethod
    def unix(cls, path: str | Path, timeout: float = 20) -> RawSMTP:
        self = cls.__new__(cls)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""
        self.greeting = self.reply()
        return self

    @classmethod
    def implicit_tls(cls, host: str, port: int, ctx: Any, timeout: float = 20) -> RawSMTP:
        self = cls.__new__(cls)
        raw = socket.create_connection((host, port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname="mx.example.test")
        self.buf = b""
        self.greeting = self.reply()
        return self

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; unparsed: {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> str:
        """One whole (possibly multi-line) reply, lines joined with newlines."""
        lines = [self._line()]
        while len(lines[-1]) > 3 and lines[-1][3:4] == b"-":
            lines.append(self._line())
        return "\n".join(x.decode() for x in lines)

    def cmd(self, line: str) -> str:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        """True if the server closed the connection (after anything still buffered)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, OSError):
            return True

    def starttls(self, ctx: Any) -> None:
        self.sock = ctx.wrap_socket(self.sock, server_hostname="mx.example.test")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
