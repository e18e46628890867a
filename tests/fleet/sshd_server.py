"""A private OpenSSH server for the `user move --ssh` tests: Debian's /usr/sbin/sshd on 127.0.0.1,
a port the OS just handed out, its own host key, one generated client key whose authorized_keys
line restricts it to `rrsync DIR` (docs/fleet.md "Between machines").

Run in the foreground (`-D -e`) with its own config: no PAM, only the current user, only that key.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
from pathlib import Path

from tests.helpers.procs import stop
from tests.helpers.wait import wait_for

SSHD = Path("/usr/sbin/sshd")
RRSYNC = Path("/usr/bin/rrsync")


def _free_port() -> int:
    # sshd cannot report a port 0 it was given; one the OS just handed out is free enough here.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path, comment: str) -> str:
    """A new ed25519 key pair at PATH (PATH.pub); the public line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


class SshdServer:
    def __init__(self, base: Path, rrsync_dir: Path) -> None:
        for binary, package in ((SSHD, "openssh-server"), (RRSYNC, "rsync")):
            if not binary.exists():
                raise RuntimeError(f"{binary} missing: the Debian package {package} is a test peer "
                                   "(scripts/peercheck.py); run `make deps-debian`")
        self.dir = base
        self.dir.mkdir(parents=True, exist_ok=True)
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.port = _free_port()
        self.host_key = self.dir / "host_key"
        self.host_public = keygen(self.host_key, "sshd-test-host")
        self.client_key = self.dir / "client_key"
        client_public = keygen(self.client_key, "appliance-move-test")
        self.authorized_keys = self.dir / "authorized_keys"
        # What an operator puts in the target's ~appliance/.ssh/authorized_keys.
        self.authorized_keys.write_text(f'command="{RRSYNC} {rrsync_dir}",restrict {client_public}\n')
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {self.host_public}\n")
        self.log = self.dir / "sshd.log"
        self.config = self.dir / "sshd_config"
        self.config.write_text("\n".join([
            f"ListenAddress 127.0.0.1:{self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            f"AllowUsers {self.user}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",  # pytest's temporary directories are not laid out for sshd's checks
            "LogLevel VERBOSE",
            "",
        ]))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, tmpfs: tuple[Path, str] | None = None) -> None:
        """TMPFS (DIR, SIZE): sshd runs in a mount namespace of its own where DIR is a tmpfs of SIZE
        (a target disk that fills up), leaving the machine's mounts alone."""
        # Debian's sshd needs its privilege separation directory (systemd makes it on a real box).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        subprocess.run([str(SSHD), "-t", "-f", str(self.config)], check=True)
        cmd = [str(SSHD), "-D", "-e", "-f", str(self.config)]
        if tmpfs is not None:
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"', "sh", tmpfs[1], str(tmpfs[0]),
                   *cmd]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        wait_for("sshd listening", self._listening, timeout=30)

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {self.log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def target(self) -> str:
        """The `--ssh` value for this server."""
        return f"{self.user}@127.0.0.1:{self.port}"

    def client(self) -> list[str]:
        """ssh with the client key and the right host key, as the move runs it."""
        return ["ssh", "-p", str(self.port), "-i", str(self.client_key), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-l", self.user]

    def stop(self) -> None:
        stop(self.proc)
