"""pebble (an ACME server) and pebble-challtestsrv (its DNS: every name is 127.0.0.1) on loopback.

PREFIX runs them in another network namespace (e.g. ["nsenter", "-t", PID, "-n"]
for a booted container), so certbot there finds them on its own 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import require


@dataclass
class Pebble:
    directory: str  # the ACME directory URL
    ca: Path  # trusts pebble's own HTTPS (REQUESTS_CA_BUNDLE)
    http01_port: int  # where pebble's VA looks for HTTP-01 answers: certbot standalone listens there


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


# Run inside PREFIX: exit 0 once the ACME directory answers over verified HTTPS.
_PROBE = (
    "import ssl, sys, urllib.request\n"
    "urllib.request.urlopen(sys.argv[1], context=ssl.create_default_context(cafile=sys.argv[2]), timeout=5).read()\n"
)


def _free_ports(prefix: list[str], n: int) -> list[int]:
    """N distinct ports free on 127.0.0.1 where PREFIX runs (asked of the OS there)."""
    code = ("import socket, sys\nss = [socket.socket() for _ in range(int(sys.argv[1]))]\n"
            "[s.bind(('127.0.0.1', 0)) for s in ss]\nprint(' '.join(str(s.getsockname()[1]) for s in ss))\n")
    out = subprocess.run([*prefix, "python3", "-c", code, str(n)], capture_output=True, text=True, check=True,
                         timeout=30)
    return [int(p) for p in out.stdout.split()]


@contextlib.contextmanager
def running_pebble(d: Path, prefix: list[str] | None = None) -> Iterator[Pebble]:
    prefix = prefix or []
    require("pebble", "pebble-challtestsrv", "openssl")
    d.mkdir(parents=True, exist_ok=True)
    # pebble ships no certificates: a CA and a server certificate for 127.0.0.1.
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
             "-subj", "/CN=pebble test CA", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost",
             "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"))
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
             "-set_serial", str(random.randint(1, 2**62)), "-days", "2", "-extfile", str(d / "san.ext"),
             "-out", str(d / "server.pem"))
    acme, mgmt, dns, dnsmgmt, tls, http01 = _free_ports(prefix, 6)
    (d / "pebble.json").write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{acme}", "managementListenAddress": f"127.0.0.1:{mgmt}",
        "certificate": str(d / "server.pem"), "privateKey": str(d / "server.key"),
        "httpPort": http01, "tlsPort": tls}}))
    peb = Pebble(f"https://127.0.0.1:{acme}/dir", d / "ca.pem", http01)
    procs: list[subprocess.Popen[bytes]] = []
    with open(d / "log", "wb") as log:
        try:
            procs.append(subprocess.Popen(
                [*prefix, "pebble-challtestsrv", "-dns01", f"127.0.0.1:{dns}", "-http01", "", "-https01", "",
                 "-tlsalpn01", "", "-management", f"127.0.0.1:{dnsmgmt}", "-defaultIPv6", ""],
                stdout=log, stderr=log))
            procs.append(subprocess.Popen(
                [*prefix, "pebble", "-config", str(d / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns}"],
                stdout=log, stderr=log, env=dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")))
            deadline = time.monotonic() + 30
            while subprocess.run([*prefix, "python3", "-c", _PROBE, peb.directory, str(peb.ca)],
                                 capture_output=True, timeout=30).returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pebble did not answer: {(d / 'log').read_text(errors='replace')[-2000:]}")
                time.sleep(0.3)
            yield peb
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=20)
