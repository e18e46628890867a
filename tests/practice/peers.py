"""Real candidates for the probe: private Postfix instances that keep the code except for one control,
a Dovecot auth server for the one that offers AUTH, and the probe's own registry entry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from appliance.practice.code import PROBE_DOMAIN
from tests.helpers.postfix import BASE, PrivatePostfix

# The probe's registered address: a loopback address no box and no Postfix trusts.
PROBE_SOURCE = "127.0.0.9"
CANDIDATE_DOMAIN = "cand.test"

# A Postfix that keeps every outside control of the code (what a careful operator configures).
GOOD_POSTFIX: dict[str, str] = {
    "myhostname": f"mx.{CANDIDATE_DOMAIN}",
    "mydestination": CANDIDATE_DOMAIN,
    "mynetworks": "127.0.0.1/32",
    "local_transport": "discard",
    "default_transport": "discard",
    "relay_transport": "discard",
    "alias_maps": "",
    "alias_database": "",
    # tests/relay_back's base config makes every domain a virtual mailbox domain (one Maildir for
    # all); a candidate has exactly its own domain.
    "virtual_mailbox_domains": "",
    "virtual_mailbox_maps": "",
    "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
    # Outsiders never use our own domain as envelope sender.
    "smtpd_sender_restrictions": f"permit_sasl_authenticated, check_sender_access inline:{{{CANDIDATE_DOMAIN}=REJECT}}",
    "smtpd_forbid_bare_newline": "yes",
    "smtpd_forbid_bare_newline_exclusions": "",
    # Limits apply to everyone (the default exempts $mynetworks).
    "smtpd_client_event_limit_exceptions": "",
    "smtpd_client_connection_count_limit": "50",
    "smtpd_tls_auth_only": "yes",
}

# Each one breaks exactly one control.
BROKEN: dict[str, dict[str, str]] = {
    "no-open-relay": {"mynetworks": "0.0.0.0/0"},
    # Postfix 3.7.11 (bookworm) has smtpd_forbid_bare_newline, default "no" in the 3.7 series.
    "no-smuggling": {"smtpd_forbid_bare_newline": "no"},
    "auth-tls-only": {"smtpd_sasl_auth_enable": "yes", "smtpd_tls_auth_only": "no"},
    "rate-limit": {"smtpd_client_connection_count_limit": "0", "smtpd_client_connection_rate_limit": "0"},
}


class DovecotAuth:
    """Dovecot as a SASL server only (PEERS.md recipe), its auth socket at DIR/auth for Postfix."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        self.socket = d / "auth"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DovecotAuth:
        d = self.dir
        for sub in ("run", "state", "home"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
        hashed = subprocess.run(["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", "tester password"],
                                capture_output=True, text=True, check=True).stdout.strip()
        (d / "passwd").write_text(f"tester@{CANDIDATE_DOMAIN}:{hashed}:65534:65534::{d / 'home'}\n")
        (d / "dovecot.conf").write_text(f"""
base_dir = {d / 'run'}
state_dir = {d / 'state'}
log_path = {d / 'dovecot.log'}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 65534
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = {d / 'passwd'}
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={d / 'home'}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service auth {{
  unix_listener {self.socket} {{
    mode = 0666
  }}
}}
service anvil {{
  chroot =
}}
""")
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", str(d / "dovecot.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (d / "dovecot.log").read_text() if (d / "dovecot.log").exists() else ""
                raise AssertionError(f"dovecot auth did not start: {log[-2000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@contextmanager
def candidate_postfix(broken: str) -> Iterator[PrivatePostfix]:
    """A running private Postfix that keeps the code except for control BROKEN."""
    name = f"practice-{broken}"
    settings = {**GOOD_POSTFIX, **BROKEN[broken]}
    dovecot = None
    if settings.get("smtpd_sasl_auth_enable") == "yes":
        ddir = BASE / f"{name}-dovecot"
        shutil.rmtree(ddir, ignore_errors=True)
        dovecot = DovecotAuth(ddir).start()
        settings.update({"smtpd_sasl_type": "dovecot", "smtpd_sasl_path": str(dovecot.socket)})
    pf = PrivatePostfix.create(name, settings)
    try:
        pf.start()
        yield pf
    finally:
        pf.remove()
        if dovecot is not None:
            dovecot.stop()
            shutil.rmtree(dovecot.dir, ignore_errors=True)


def probe(target: str, *args: str, config: Path | None = None, password: str | None = None,
          check_rc: int | None = None) -> dict[str, Any]:
    """`appliance practice probe TARGET --json` as the operator runs it; the parsed report."""
    cmd = [sys.executable, "-m", "appliance", *(["-c", str(config)] if config else []), "practice", "probe", target,
           "--source", PROBE_SOURCE, "--json", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          input=password + "\n" if password is not None else None)
    if proc.returncode not in (0, 1) or (check_rc is not None and proc.returncode != check_rc):
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    rep: dict[str, Any] = json.loads(proc.stdout)
    assert (proc.returncode == 0) == all(r["status"] == "pass" for r in rep["results"]), proc.stdout
    return rep


def statuses(rep: dict[str, Any], status: str) -> set[str]:
    return {r["control"] for r in rep["results"] if r["status"] == status}


PROBE_MEMBER = ["--id", "practice-probe", "--name", "Consortium practice probe", "--domain", PROBE_DOMAIN,
                "--relay", f"probe.{PROBE_DOMAIN}:25={PROBE_SOURCE}/32"]
