"""certbot obtains and renews a certificate from pebble; the states' deploy hook installs it and the services reload.

On the host, all on loopback: pebble (ACME server) with pebble-challtestsrv as
its DNS (every name is 127.0.0.1), certbot standalone answering HTTP-01, and a
development box running under supervisor whose TLS files are the hook's
destination. The hook is states/appliance/files/certbot-deploy-hook.sh, the
file Salt installs as /usr/local/lib/appliance/certbot-deploy-hook.
"""

from __future__ import annotations

import grp
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.conftest import require
from tests.helpers.box import Box, wait_port
from tests.states.pebble import Pebble, running_pebble
from tests.states.tree import REPO

pytestmark = [pytest.mark.slow, pytest.mark.peers]

HOOK = REPO / "states" / "appliance" / "files" / "certbot-deploy-hook.sh"
NAME = "mx.example.test"


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[Pebble]:
    require("certbot")
    with running_pebble(tmp_path / "pebble") as peb:
        yield peb


def served_cert(host: str, port: int) -> bytes:
    """The DER certificate a TLS listener presents (implicit TLS), unverified."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=10) as raw, ctx.wrap_socket(raw) as s:
        cert = s.getpeercert(binary_form=True)
    assert cert is not None
    return cert


def first_cert_der(pem_file: Path) -> bytes:
    return x509.load_pem_x509_certificate(pem_file.read_bytes()).public_bytes(Encoding.DER)


def implicit_tls_endpoints(box: Box) -> list[tuple[str, int]]:
    from appliance.catalog import built_services

    cfg = box.cfg
    out = []
    for spec in built_services():
        for name in spec.endpoints:
            lst = getattr(cfg.listeners, name)
            if lst.enabled and lst.tls == "implicit":
                out.append((lst.host, lst.port))
    return out


def program_pids(box: Box) -> dict[str, int]:
    return {s["name"]: s["pid"] for s in box.status()["services"] if s["state"] == "running"}


def wait_served(box: Box, want: bytes, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for host, port in implicit_tls_endpoints(box):
        while True:
            try:
                wait_port(host, port, timeout=max(1.0, deadline - time.monotonic()))
                if served_cert(host, port) == want:
                    break
            except (OSError, ssl.SSLError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{host}:{port} does not present the new certificate after {timeout}s")
            time.sleep(0.3)


def test_certbot_obtains_and_renews_and_the_hook_reloads_the_services(box: Box, pebble: Pebble, tmp_path: Path) -> None:
    # The box reads its certificate where the hook installs certbot's (as on a real box:
    # /etc/appliance/tls/certbot/); until ACME succeeds that is a self-signed copy.
    dest = tmp_path / "tls-certbot"
    dest.mkdir()
    cfg = box.cfg
    shutil.copy(cfg.tls.cert, dest / "fullchain.pem")
    shutil.copy(cfg.tls.key, dest / "privkey.pem")
    text = box.config_file.read_text()
    text = re.sub(r'(?m)^cert = .*$', f'cert = "{dest}/fullchain.pem"', text, count=1)
    text = re.sub(r'(?m)^key = "[^"]*tls[^"]*"$', f'key = "{dest}/privkey.pem"', text, count=1)
    box.config_file.write_text(text)
    assert box.cfg.tls.cert == f"{dest}/fullchain.pem" and box.cfg.tls.key == f"{dest}/privkey.pem"
    box.add_user("alice")
    box.up()
    before = program_pids(box)
    assert before, "no service running: nothing would show the reload"
    self_signed = first_cert_der(dest / "fullchain.pem")
    for host, port in implicit_tls_endpoints(box):
        assert served_cert(host, port) == self_signed

    cb = tmp_path / "certbot"
    env = dict(os.environ, REQUESTS_CA_BUNDLE=str(pebble.ca), APPLIANCE_CONFIG=str(box.config_file),
               APPLIANCE_TLS_DIR=str(dest), APPLIANCE_TLS_GROUP=grp.getgrgid(os.getgid()).gr_name, APPLIANCE_VENV=str(REPO / ".venv"),
               APPLIANCE_HOOK_ENV="/nonexistent")
    common = ["--server", pebble.directory, "--config-dir", str(cb / "etc"), "--work-dir", str(cb / "work"),
              "--logs-dir", str(cb / "log"), "--non-interactive"]
    obtain = subprocess.run(
        ["certbot", "certonly", *common, "--agree-tos", "--register-unsafely-without-email", "--standalone",
         "--http-01-port", str(pebble.http01_port), "--http-01-address", "127.0.0.1",
         "--cert-name", NAME, "-d", NAME, "--deploy-hook", str(HOOK)],
        capture_output=True, text=True, env=env, timeout=180)
    assert obtain.returncode == 0, obtain.stdout + obtain.stderr
    assert "appliance deploy hook: services restarted" in obtain.stderr

    live = cb / "etc" / "live" / NAME
    issued = first_cert_der(live / "fullchain.pem")
    assert (dest / "fullchain.pem").read_bytes() == (live / "fullchain.pem").read_bytes()
    assert (dest / "privkey.pem").read_bytes() == (live / "privkey.pem").read_bytes()
    assert oct((dest / "privkey.pem").stat().st_mode & 0o777) == "0o640"
    assert x509.load_der_x509_certificate(issued).subject.rfc4514_string() != ""
    wait_served(box, issued)
    after = program_pids(box)
    assert set(after) == set(before) and all(after[n] != before[n] for n in before), (before, after)

    # Renewal the way the box's timer runs it (the hook is remembered in the renewal config).
    renew = subprocess.run(["certbot", "renew", *common, "--force-renewal", "--no-random-sleep-on-renew"],
                           capture_output=True, text=True, env=env, timeout=180)
    assert renew.returncode == 0, renew.stdout + renew.stderr
    renewed = first_cert_der(live / "fullchain.pem")
    assert renewed != issued
    assert (dest / "fullchain.pem").read_bytes() == (live / "fullchain.pem").read_bytes()
    wait_served(box, renewed)
    again = program_pids(box)
    assert all(again[n] != after[n] for n in after)
