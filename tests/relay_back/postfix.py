"""A private Postfix instance on loopback (PEERS.md recipe): own config, queue and log directories.

Used as the neighbouring MTA in tests and as the reference in bench/relay.
The directory is under /var/tmp (not pytest's 0700 tmp) because Postfix's
daemons and its virtual delivery agent run as other users.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.devbox import free_port
from appliance.tlsfiles import make_self_signed
from tests.helpers.box import wait_port

BASE = Path("/var/tmp/appliance-postfix")
SYSTEM_MAIN_CF = Path("/etc/postfix/main.cf")


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


def _master_cf(port: int) -> str:
    out = []
    for line in Path("/etc/postfix/master.cf").read_text().splitlines():
        fields = line.split()
        if line and not line[0].isspace() and not line.startswith("#") and len(fields) >= 8:
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"127.0.0.1:{port}"
            fields[4] = "n"  # no chroot: the queue directory is private and not set up as a jail
            line = "  ".join(fields)
        out.append(line)
    return "\n".join(out) + "\n"


@dataclass
class PrivatePostfix:
    dir: Path
    port: int

    @classmethod
    def create(cls, name: str, main_cf: dict[str, str], port: int = 0) -> PrivatePostfix:
        d = BASE / name
        if d.exists():
            subprocess.run(["postfix", "-c", str(d), "stop"], capture_output=True, check=False)
            shutil.rmtree(d)
        for sub in ("queue", "data", "vmail", "tls"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(BASE, 0o755)
        os.chmod(d, 0o755)
        shutil.chown(d / "data", "postfix")
        shutil.chown(d / "vmail", "nobody", "nogroup")
        port = port or free_port("127.0.0.1")
        make_self_signed(d / "tls" / "cert.pem", d / "tls" / "key.pem", ["mx.postfix.test", "localhost", "127.0.0.1"])
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(d / "queue"),
            "data_directory": str(d / "data"),
            "maillog_file": str(d / "maillog"),
            "maillog_file_prefixes": str(d),
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "mx.postfix.test",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "local_recipient_maps": "",
            "smtpd_tls_cert_file": str(d / "tls" / "cert.pem"),
            "smtpd_tls_key_file": str(d / "tls" / "key.pem"),
            "smtpd_tls_security_level": "may",
            "smtp_tls_security_level": "may",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "virtual_mailbox_base": str(d / "vmail"),
            "virtual_mailbox_maps": "static:Maildir/",
            "virtual_uid_maps": "static:65534",
            "virtual_gid_maps": "static:65534",
            "virtual_minimum_uid": "1",
            "smtp_host_lookup": "native",
            "smtp_dns_support_level": "disabled",
            **main_cf,
        }
        (d / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        (d / "master.cf").write_text(_master_cf(port))
        _allow_config_dir(d)
        return cls(d, port)

    @property
    def cert(self) -> Path:
        return self.dir / "tls" / "cert.pem"

    @property
    def maildir_new(self) -> Path:
        return self.dir / "vmail" / "Maildir" / "new"

    def start(self) -> PrivatePostfix:
        r = subprocess.run(["postfix", "-c", str(self.dir), "start"], capture_output=True, text=True)
        if r.returncode != 0:
            raise AssertionError(f"postfix start failed: {r.stderr}{self.log()[-2000:]}")
        wait_port("127.0.0.1", self.port)
        return self

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.dir), "stop"], capture_output=True, check=False)
        pid_file = self.dir / "queue" / "pid" / "master.pid"
        deadline = time.monotonic() + 20
        while pid_file.exists() and time.monotonic() < deadline:
            try:
                os.kill(int(pid_file.read_text().strip()), 0)
            except (OSError, ValueError):
                break
            time.sleep(0.1)

    def remove(self) -> None:
        """Stop and delete the instance's directory (its line in the system main.cf stays: harmless)."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.dir / "maillog").read_text()
        except OSError:
            return ""
