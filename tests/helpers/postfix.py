"""A private Postfix instance (PEERS.md recipe): own config, queue and log directories, on this machine's
loopback or inside a test network namespace.

Used as the neighbouring MTA in tests/relay_back, tests/practice and bench/relay (loopback), as the
outsider MTA and the outbound destination of tests/internet (namespaces). The directory is under
/var/tmp (not pytest's 0700 tmp) because Postfix's daemons and its virtual delivery agent run as other
users.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.devbox import free_port
from appliance.tlsfiles import make_self_signed
from tests.helpers.box import wait_port
from tests.helpers.netns import Host, listening
from tests.helpers.wait import wait_for

BASE = Path("/var/tmp/appliance-postfix")
SYSTEM_MAIN_CF = Path("/etc/postfix/main.cf")
STOP_WAIT = 20.0  # seconds `stop` waits for the master process to exit


def _allow_config_dir(d: Path) -> None:
    """`postfix -c DIR` needs DIR in alternate_config_directories of the system main.cf (idempotent)."""
    lines = SYSTEM_MAIN_CF.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("alternate_config_directories"):
            dirs = line.split("=", 1)[1].replace(",", " ").split()
            if str(d) in dirs:
                return
            lines[i] = f"alternate_config_directories = {' '.join([*dirs, str(d)])}"
            break
    else:
        lines.append(f"alternate_config_directories = {d}")
    SYSTEM_MAIN_CF.write_text("\n".join(lines) + "\n")


def _master_cf(address: str, port: int) -> str:
    out = []
    for line in Path("/etc/postfix/master.cf").read_text().splitlines():
        fields = line.split()
        if line and not line[0].isspace() and not line.startswith("#") and len(fields) >= 8:
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"{address}:{port}"
            fields[4] = "n"  # no chroot: the queue directory is private and not set up as a jail
            line = "  ".join(fields)
        out.append(line)
    return "\n".join(out) + "\n"


@dataclass
class PrivatePostfix:
    dir: Path
    port: int
    address: str = "127.0.0.1"
    host: Host | None = None  # the namespace it runs in; None: this machine

    @classmethod
    def create(cls, name: str, main_cf: dict[str, str], port: int = 0, *, host: Host | None = None,
               address: str = "127.0.0.1", base: Path = BASE) -> PrivatePostfix:
        """A stopped instance NAME under BASE listening on ADDRESS:PORT (0: a free one on loopback, 25 in
        a namespace), MAIN_CF over the defaults. On this machine's loopback it also has a self-signed
        certificate for STARTTLS and delivers `virtual_mailbox_domains` to one Maildir (maildir_new)."""
        d = base / name
        if d.exists():
            subprocess.run(["postfix", "-c", str(d), "stop"], capture_output=True, check=False)
            shutil.rmtree(d)
        for sub in ("queue", "data", "vmail", "tls"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o755)
        os.chmod(d, 0o755)
        shutil.chown(d / "data", "postfix")
        port = port or (25 if host else free_port(address))
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(d / "queue"),
            "data_directory": str(d / "data"),
            "maillog_file": str(d / "maillog"),
            "maillog_file_prefixes": str(d),
            "inet_interfaces": address,
            "inet_protocols": "ipv4",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "smtp_host_lookup": "native",
            "smtp_dns_support_level": "disabled",
            "smtp_tls_security_level": "may",
        }
        if host is None:
            shutil.chown(d / "vmail", "nobody", "nogroup")
            make_self_signed(d / "tls" / "cert.pem", d / "tls" / "key.pem", ["mx.postfix.test", "localhost", address])
            settings |= {
                "myhostname": "mx.postfix.test",
                "local_recipient_maps": "",
                "smtpd_tls_cert_file": str(d / "tls" / "cert.pem"),
                "smtpd_tls_key_file": str(d / "tls" / "key.pem"),
                "smtpd_tls_security_level": "may",
                "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
                "virtual_mailbox_base": str(d / "vmail"),
                "virtual_mailbox_maps": "static:Maildir/",
                "virtual_uid_maps": "static:65534",
                "virtual_gid_maps": "static:65534",
                "virtual_minimum_uid": "1",
            }
        settings |= main_cf
        (d / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        (d / "master.cf").write_text(_master_cf(address, port))
        _allow_config_dir(d)
        return cls(d, port, address, host)

    @property
    def cert(self) -> Path:
        return self.dir / "tls" / "cert.pem"

    @property
    def maildir_new(self) -> Path:
        return self.dir / "vmail" / "Maildir" / "new"

    def run(self, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """ARGV on this instance's machine or in its namespace."""
        if self.host is not None:
            return self.host.run(*argv, **kw)
        return subprocess.run(argv, capture_output=True, text=True, **kw)

    def start(self) -> PrivatePostfix:
        r = self.run("postfix", "-c", str(self.dir), "start")
        if r.returncode != 0:
            raise AssertionError(f"postfix start failed: {r.stdout}{r.stderr}{self.log()[-2000:]}")
        if self.host is None:
            wait_port(self.address, self.port)
        else:
            host = self.host
            wait_for("postfix listening", lambda: listening(host, self.port), 30)
        return self

    def stop(self) -> None:
        """Stop and wait (at most STOP_WAIT s) until the master process has exited: its pid file's process
        is gone, so a next instance or the namespace's teardown does not race it."""
        pid_file = self.dir / "queue" / "pid" / "master.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        self.run("postfix", "-c", str(self.dir), "stop", check=False)
        deadline = time.monotonic() + STOP_WAIT
        while pid and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.1)

    def remove(self) -> None:
        """Stop and delete the instance's directory (its line in the system main.cf stays: harmless)."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.dir / "maillog").read_text(errors="replace")
        except OSError:
            return ""
