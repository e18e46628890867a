"""A real redis-server for the fleet tests: on a unix socket (loopback tests) or in a network namespace.

Started with no persistence (``save ""``, no AOF) in its own directory, so a kill
loses everything, like a crashed Redis without a disk; ``kill`` and ``start``
let a test take it away and bring it back at the same address.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

START_TIMEOUT = 15.0


class RedisServer:
    def __init__(self, directory: Path, bind: str = "", port: int = 0, prefix: list[str] | None = None,
                 persistent: bool = False, password: str = "") -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("missing test peer redis-server: run `make test` (it installs it, scripts/peercheck.py)")
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bind = bind
        self.port = port
        self.socket = self.dir / "redis.sock"
        self.prefix = prefix or []  # e.g. ["ip", "netns", "exec", NS]
        # persistent: an append-only file synced at every write, so a SIGKILL loses nothing (what
        # docs/fleet.md asks of a production Redis); otherwise a kill forgets everything.
        self.persistent = persistent
        self.password = password  # requirepass: clients must AUTH
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port:
            return f"redis://{self.bind}:{self.port}/0"
        return f"unix://{self.socket}?db=0"

    def client(self) -> redis.Redis:
        """The test's own client, always over the unix socket (the TCP address may exist only in a namespace)."""
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2, decode_responses=True,
                           password=self.password or None)

    def start(self) -> None:
        args = [
            "redis-server", "--save", "", "--dir", str(self.dir),
            *(["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]),
            "--port", str(self.port), "--unixsocket", str(self.socket), "--unixsocketperm", "700",
            "--logfile", str(self.dir / "redis.log"), "--daemonize", "no",
        ]
        if self.port:
            args += ["--bind", self.bind, "--protected-mode", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen([*self.prefix, *args], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                c = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1, password=self.password or None)
                c.ping()
                c.close()
                return
            except (redis.RedisError, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.dir / "redis.log").read_text(errors="replace")[-2000:] if (self.dir / "redis.log").exists() else ""
                    raise RuntimeError(f"redis-server did not start: {log}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: what a crash looks like to the relays (connections reset, state gone)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
        self.socket.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()
