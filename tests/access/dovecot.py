"""A private Dovecot (Debian's dovecot-imapd/pop3d) on loopback, the reference IMAP/POP server.

Recipe from PEERS.md: `dovecot -F -c DIR/dovecot.conf`, everything under DIR,
passwd-file users running as nobody, ports the OS picked, STARTTLS with the
same certificate the box uses. Used by the differential tests and bench/imap.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.devbox import free_port

# The box's folder set (INBOX and the special-use folders it creates, all subscribed), for a
# reference Dovecot whose LIST/LSUB answers must match the box's.
BOX_FOLDERS_CONF = r"""
namespace inbox {
  mailbox INBOX {
    auto = subscribe
  }
  mailbox Sent {
    special_use = \Sent
    auto = subscribe
  }
  mailbox Trash {
    special_use = \Trash
    auto = subscribe
  }
  mailbox Drafts {
    special_use = \Drafts
    auto = subscribe
  }
  mailbox Junk {
    special_use = \Junk
    auto = subscribe
  }
  mailbox Outbox {
    auto = subscribe
  }
}
"""


@dataclass
class Dovecot:
    dir: Path
    imap_port: int
    pop3_port: int
    proc: subprocess.Popen[bytes]

    def maildir(self, login: str) -> Path:
        """LOGIN's INBOX Maildir (owned by nobody, as Dovecot's mail processes run)."""
        return self.dir / "home" / login / "Maildir"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _hash(password: str) -> str:
    out = subprocess.run(["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", password], capture_output=True, text=True,
                         check=True, timeout=30)
    return out.stdout.strip()


def start_dovecot(users: dict[str, str], cert: str, key: str, hashes: dict[str, str] | None = None,
                  extra_conf: str = "") -> Dovecot:
    """Start Dovecot serving USERS (login -> password), each with an empty Maildir, on 127.0.0.1.

    HASHES (login -> "{SCHEME}hash") replaces the default SHA512-CRYPT hash, e.g. to give
    Dovecot the same argon2id hash the appliance verifies, for a fair login benchmark.
    EXTRA_CONF is appended to dovecot.conf (Dovecot merges repeated blocks): the
    differential's extensions, the benchmark's 200-session process limits.
    """
    if shutil.which("dovecot") is None:
        raise RuntimeError("dovecot is not installed (package dovecot-imapd dovecot-pop3d)")
    # Under /tmp, not pytest's 0700 tree: the mail processes run as nobody and must reach the homes.
    d = Path(tempfile.mkdtemp(prefix="access-dovecot-"))
    d.chmod(0o755)
    imap_port, pop3_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    lines = []
    for login, password in users.items():
        home = d / "home" / login
        (home / "Maildir").mkdir(parents=True)
        for p in (d / "home", home, home / "Maildir"):
            os.chown(p, 65534, 65534)
        stored = (hashes or {}).get(login) or _hash(password)
        lines.append(f"{login}:{stored}:65534:65534::{home}")
    (d / "passwd").write_text("\n".join(lines) + "\n")
    shutil.copy(cert, d / "cert.pem")
    shutil.copy(key, d / "key.pem")
    (d / "dovecot.conf").write_text(f"""
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = required
ssl_cert = <{d}/cert.pem
ssl_key = <{d}/key.pem
disable_plaintext_auth = yes
auth_mechanisms = plain
mail_location = maildir:~/Maildir
first_valid_uid = 65534
mail_fsync = optimized
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
userdb {{
  driver = passwd-file
  args = {d}/passwd
}}
namespace inbox {{
  inbox = yes
  separator = .
  mailbox Sent {{
    special_use = \\Sent
    auto = create
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = create
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
service pop3-login {{
  chroot =
}}
{extra_conf}
""")
    proc = subprocess.Popen(["dovecot", "-F", "-c", str(d / "dovecot.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    dv = Dovecot(d, imap_port, pop3_port, proc)
    from tests.helpers.box import wait_port

    try:
        wait_port("127.0.0.1", imap_port, timeout=30)
        wait_port("127.0.0.1", pop3_port, timeout=30)
    except TimeoutError:
        log = (d / "dovecot.log").read_text() if (d / "dovecot.log").exists() else ""
        dv.stop()
        raise RuntimeError(f"dovecot did not start: {log[-2000:]}") from None
    time.sleep(0.2)
    return dv
