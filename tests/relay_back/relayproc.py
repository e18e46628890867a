"""The real relay process (python -m services.relay), started and killed by the test itself."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.config import Config
from tests.helpers.box import wait_port


def raise_member_limits(cfg: Config) -> None:
    """The dev registry limits this box's own member to 600/min; load tests need more."""
    p = cfg.registry_dir / "registry.json"
    reg = json.loads(p.read_text())
    reg["members"][0]["limits"] = {"messages_per_minute": 1_000_000, "burst": 100_000, "connections": 1000}
    p.write_text(json.dumps(reg, indent=2))


@dataclass
class RelayProcess:
    config_file: Path
    log_file: Path
    fault: str = ""
    proc: subprocess.Popen[bytes] | None = None
    python_args: tuple[str, ...] = ("-m", "services.relay")  # what runs the relay (bench: another event loop)

    def start(self, cfg: Config) -> RelayProcess:
        env = dict(os.environ)
        env.pop("APPLIANCE_FAULT", None)
        if self.fault:
            env["APPLIANCE_FAULT"] = self.fault
        log = open(self.log_file, "ab")
        self.proc = subprocess.Popen([sys.executable, *self.python_args, "-c", str(self.config_file)],
                                     stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                wait_port(cfg.listeners.mx.host, cfg.listeners.mx.port, timeout=0.5)
                return self
            except TimeoutError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"relay did not start: {self.log_file.read_text()[-3000:]}") from None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()


@dataclass
class Load:
    """SMTP clients (smtplib) sending numbered messages until told to stop or the relay dies.

    Records the Message-ID of every message that got a 250 after DATA: those must be delivered.
    """

    host: str
    port: int
    recipient: str
    sessions: int = 4
    max_messages: int = 400
    size: int = 1000
    tag: str = "m"
    acked: list[str] = field(default_factory=list)
    replies: list[tuple[int, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _n: int = 0

    def _next(self) -> int | None:
        with self._lock:
            if self._n >= self.max_messages or self._stop.is_set():
                return None
            self._n += 1
            return self._n

    def _session(self) -> None:
        try:
            conn = smtplib.SMTP(self.host, self.port, timeout=20)
            conn.ehlo("load.test")
        except (OSError, smtplib.SMTPException):
            return
        try:
            while (i := self._next()) is not None:
                mid = f"<{self.tag}-{i}@load.test>"
                body = (f"From: sender@isp-load.test\r\nTo: {self.recipient}\r\nSubject: load {i}\r\n"
                        f"Message-ID: {mid}\r\n\r\n" + "x" * self.size + "\r\n")
                try:
                    conn.mail("sender@isp-load.test")
                    conn.rcpt(self.recipient)
                    code, resp = conn.data(body.encode())
                except smtplib.SMTPDataError as exc:
                    code, resp = exc.smtp_code, exc.smtp_error
                except (OSError, smtplib.SMTPException):
                    return  # the relay died: anything not yet answered is not ours to count
                with self._lock:
                    self.replies.append((code, resp.decode(errors="replace")))
                    if code == 250:
                        self.acked.append(mid)
                if code != 250:
                    try:
                        conn.rset()
                    except (OSError, smtplib.SMTPException):
                        return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def run(self) -> None:
        threads = [threading.Thread(target=self._session, daemon=True) for _ in range(self.sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)

    def start_background(self) -> threading.Thread:
        t = threading.Thread(target=self.run, daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()


def delivered_ids(maildir: Path) -> set[str]:
    out = set()
    for sub in ("new", "cur"):
        d = maildir / sub
        if not d.exists():
            continue
        for p in d.iterdir():
            for line in p.read_bytes().split(b"\n\n", 1)[0].split(b"\n"):
                if line.lower().startswith(b"message-id:"):
                    out.add(line.split(b":", 1)[1].strip().decode())
    return out
