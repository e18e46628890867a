"""The plain-HTTP listener on the well-known names (listeners.wellknown_http, services/console/wellknown_http.py),
driven with curl as Thunderbird, Outlook and an ACME CA reach it (`--resolve NAME:PORT:127.0.0.1`, OS-picked
ports), and a real certbot webroot issuance from pebble through it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w
from cryptography import x509

from appliance.config import ConfigError, load
from appliance.devbox import free_port
from appliance.tlsfiles import make_self_signed
from services.console.wellknown import names
from tests.conftest import require
from tests.console.conftest import require_curl
from tests.helpers.box import make_box, run_cli, wait_port
from tests.helpers.wait import closed_by_server, refused_while_held
from tests.states.pebble import running_pebble

REPO = Path(__file__).resolve().parents[2]
SECOND = "second.test"
PER_CLIENT = 3
LIFETIME = 3.0
TOKEN = "Zx9_-tokenAbc123"


@dataclass
class Plain:
    config: Path
    port: int  # the HTTP listener
    https_port: int  # listeners.wellknown
    cert: str
    hostname: str
    domains: list[str]
    webroot: Path

    def curl(self, name: str, path: str, *args: str, method: str = "GET",
             follow: bool = False) -> tuple[int, dict[str, str], bytes]:
        """(status or 0 if none, response headers lower-cased, body) of http://NAME:PORT/PATH. FOLLOW: curl
        follows redirects, to the HTTPS listener too (the same name resolves there, its certificate verified)."""
        cmd = [require_curl(), "-sS", "--max-time", "30", "--cacert", self.cert,
               "--resolve", f"{name}:{self.port}:127.0.0.1", "--resolve", f"{name}:{self.https_port}:127.0.0.1",
               "-X", method, "-D", "-", "-o", "-", *(["-L"] if follow else []), *args,
               f"http://{name}:{self.port}{path}"]
        r = subprocess.run(cmd, capture_output=True, timeout=60)
        out = r.stdout
        status, headers = 0, {}
        # One header block per response (several when following): the last one is the answer.
        while out.startswith(b"HTTP/"):
            head, _, out = out.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        return status, headers, out


def _start(config: Path, log_to: Path) -> subprocess.Popen[bytes]:
    log = open(log_to, "ab")  # the child has its own descriptor; ours is closed below
    try:
        return subprocess.Popen([sys.executable, "-m", "services.console", "-c", str(config)], cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def _with_http(box_config: Path, port: int, webroot: Path, **extra: object) -> dict[str, object]:
    data = tomllib.loads(box_config.read_text())
    data["listeners"]["wellknown_http"] = {"host": "127.0.0.1", "port": port, "acme_webroot": str(webroot),
                                           **extra}
    return data


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plain]:
    box = make_box(tmp_path_factory.mktemp("wellknown_http"))
    webroot = box.dir / "acme-webroot"
    (webroot / ".well-known" / "acme-challenge").mkdir(parents=True)
    data = _with_http(box.config_file, free_port("127.0.0.1"), webroot, max_per_client=PER_CLIENT,
                      connection_lifetime=LIFETIME)
    data["box"]["domains"].append(SECOND)
    box.config_file.write_text(tomli_w.dumps(data))
    cfg = load(box.config_file)
    make_self_signed(Path(cfg.tls.cert), Path(cfg.tls.key), ["localhost", "127.0.0.1", *names(cfg)])
    proc = _start(box.config_file, box.dir / "console.log")
    try:
        wait_port("127.0.0.1", cfg.listeners.wellknown_http.port)
        wait_port("127.0.0.1", cfg.listeners.wellknown.port)
        yield Plain(box.config_file, cfg.listeners.wellknown_http.port, cfg.listeners.wellknown.port, cfg.tls.cert,
                    cfg.box.hostname, list(cfg.box.domains), webroot)
    finally:
        _stop(proc)


def test_thunderbird_fetches_the_autoconfig_xml_over_http(plain: Plain) -> None:
    status, headers, body = plain.curl(f"autoconfig.{SECOND}", "/mail/config-v1.1.xml")
    assert status == 200 and headers["content-type"].startswith("application/xml"), (status, body)
    provider = ET.fromstring(body).find("emailProvider")
    assert provider is not None and provider.get("id") == SECOND
    imap = provider.find("incomingServer[@type='imap']")
    assert imap is not None and imap.findtext("hostname") == plain.hostname and imap.findtext("socketType") == "SSL"
    # The same document as over HTTPS, with the address Thunderbird appends.
    q = f"/mail/config-v1.1.xml?emailaddress=bob@{plain.domains[0]}"
    _, _, over_http = plain.curl(f"autoconfig.{SECOND}", q)
    https = subprocess.run([require_curl(), "-sS", "--cacert", plain.cert, "--resolve",
                            f"autoconfig.{SECOND}:{plain.https_port}:127.0.0.1",
                            f"https://autoconfig.{SECOND}:{plain.https_port}{q}"], capture_output=True, timeout=60)
    assert over_http == https.stdout and b"<clientConfig" in over_http


def test_everything_else_is_a_301_to_the_same_https_url(plain: Plain) -> None:
    d = plain.domains[0]
    path = f"/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=bob@{d}&x=%20y"
    status, headers, body = plain.curl(f"autoconfig.{d}", path)
    assert status == 301 and headers["location"] == f"https://autoconfig.{d}:{plain.https_port}{path}", headers
    assert body == b""
    # curl follows it to the HTTPS listener, the certificate verified for the name, and gets the XML.
    status, headers, body = plain.curl(f"autoconfig.{d}", path, follow=True)
    assert status == 200 and b"<clientConfig" in body


def test_outlook_gets_the_302_of_the_autodiscover_http_redirect_method(plain: Plain) -> None:
    for name in (f"autodiscover.{SECOND}", plain.hostname):
        for path in ("/Autodiscover/Autodiscover.xml", "/autodiscover/autodiscover.xml"):
            status, headers, body = plain.curl(name, path)
            want = f"https://{name}:{plain.https_port}/autodiscover/autodiscover.xml"
            assert (status, headers.get("location")) == (302, want), (name, path, status, headers)
    # Where it points, the POST Outlook sends next is answered.
    from appliance.publish import autoconfig

    req = (f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{autoconfig.AUTODISCOVER_REQUEST_NS}">'
           f"<Request><EMailAddress>carol@{SECOND}</EMailAddress><AcceptableResponseSchema>"
           f"{autoconfig.OUTLOOK_RESPONSE_NS}</AcceptableResponseSchema></Request></Autodiscover>")
    r = subprocess.run([require_curl(), "-sS", "--cacert", plain.cert, "--resolve",
                        f"autodiscover.{SECOND}:{plain.https_port}:127.0.0.1", "-H", "Content-Type: text/xml",
                        "--data-binary", req, f"https://autodiscover.{SECOND}:{plain.https_port}"
                        "/autodiscover/autodiscover.xml"], capture_output=True, timeout=60)
    assert b"<Protocol" in r.stdout and plain.hostname.encode() in r.stdout


def test_the_mta_sts_policy_and_the_console_are_never_served_over_http(plain: Plain) -> None:
    for d in plain.domains:
        status, headers, body = plain.curl(f"mta-sts.{d}", "/.well-known/mta-sts.txt")
        # RFC 8461 3.3: HTTPS only; a sender does not follow the redirect.
        assert status == 301 and headers["location"].startswith(f"https://mta-sts.{d}:"), (status, headers)
        assert b"STSv1" not in body
    for path in ("/", "/login", "/admin", "/account", "/static/console.css"):
        status, headers, body = plain.curl(f"autoconfig.{SECOND}", path)
        assert status == 301 and headers["location"].startswith("https://"), (path, status)
        # ... and where it points (the HTTPS well-known listener) there is no console either.
        assert plain.curl(f"autoconfig.{SECOND}", path, follow=True)[0] == 404
    # A name the box does not serve: 404, no redirect.
    for name in ("localhost", "www.example.org"):
        status, headers, _ = plain.curl(name, "/login")
        assert status == 404 and "location" not in headers


def test_an_acme_challenge_is_served_from_the_webroot_under_any_name(plain: Plain) -> None:
    keyauth = f"{TOKEN}.thumbprint-of-the-account-key".encode()
    (plain.webroot / ".well-known" / "acme-challenge" / TOKEN).write_bytes(keyauth)
    (plain.webroot / "secret.txt").write_bytes(b"not for the Internet")
    for name in (plain.hostname, f"autoconfig.{SECOND}", "extra-name.example.org"):
        status, headers, body = plain.curl(name, f"/.well-known/acme-challenge/{TOKEN}")
        assert (status, body) == (200, keyauth), (name, status, body)
    assert plain.curl(plain.hostname, "/.well-known/acme-challenge/no-such-token")[0] == 404
    for path in ("/.well-known/acme-challenge/..%2Fsecret.txt", "/.well-known/acme-challenge/../../secret.txt",
                 "/.well-known/acme-challenge/", "/secret.txt"):
        status, _, body = plain.curl(plain.hostname, path, "--path-as-is")
        assert b"not for the Internet" not in body and status in (301, 404), (path, status)


def test_oversize_headers_are_refused(plain: Plain) -> None:
    status, _, body = plain.curl(f"autoconfig.{SECOND}", "/mail/config-v1.1.xml", "-H", "X-Padding: " + "a" * 20_000)
    assert status in (0, 400), status  # twisted.web answers 400 and closes; curl may see only the close
    assert b"<clientConfig" not in body
    assert plain.curl(f"autoconfig.{SECOND}", "/mail/config-v1.1.xml")[0] == 200


def test_the_per_client_cap_and_the_lifetime(plain: Plain) -> None:
    def hold() -> list[socket.socket]:
        return [socket.create_connection(("127.0.0.1", plain.port), timeout=30) for _ in range(PER_CLIENT)]

    # Dropped while the slots are taken (curl's status 0: no answer).
    assert refused_while_held(hold, lambda: plain.curl(f"autoconfig.{SECOND}", "/mail/config-v1.1.xml")[0] == 0)
    # A connection that sends nothing is closed when its lifetime is over.
    with socket.create_connection(("127.0.0.1", plain.port), timeout=30) as silent:
        assert closed_by_server(silent)
    for _ in range(50):
        if plain.curl(f"autoconfig.{SECOND}", "/mail/config-v1.1.xml")[0] == 200:
            break
    else:
        pytest.fail("the per-client slots did not come back after the connections closed")


def test_listed_in_status_as_a_console_endpoint(plain: Plain) -> None:
    endpoints = {e["name"]: e for e in json.loads(run_cli(plain.config, "status", "--json", check=False).stdout)[
        "endpoints"]}
    assert endpoints["wellknown_http"] == {"name": "wellknown_http", "service": "console", "host": "127.0.0.1",
                                           "port": plain.port, "tls": "none", "enabled": True}


def test_doctor_fetches_the_http_autoconfig_and_the_redirect(plain: Plain) -> None:
    found = {f["check"]: f for f in json.loads(run_cli(plain.config, "doctor", "--json", check=False).stdout)}
    for d in plain.domains:
        assert found[f"http autoconfig {d}"]["level"] == "ok", found[f"http autoconfig {d}"]
        assert found[f"http redirect {d}"]["level"] == "ok", found[f"http redirect {d}"]
    assert found["listener wellknown_http"]["level"] == "ok"
    assert "acme webroot" not in found  # the fixture's webroot has its challenge directory
    assert found["http reachable"]["level"] == "warning"  # loopback, not port 80
    # A webroot certbot could not write into (renewals would fail): said.
    data = tomllib.loads(plain.config.read_text())
    data["listeners"]["wellknown_http"]["acme_webroot"] = str(plain.webroot / "missing")
    other = plain.config.with_name("no-webroot.toml")
    other.write_text(tomli_w.dumps(data))
    found = {f["check"]: f for f in json.loads(run_cli(other, "doctor", "--json", check=False).stdout)}
    assert found["acme webroot"]["level"] == "warning" and "acme-challenge" in found["acme webroot"]["summary"]


@pytest.mark.parametrize(("change", "key"), [
    ({"tls": "implicit"}, "listeners.wellknown_http.tls"),
    ({"port": "HTTPS"}, "listeners.wellknown_http.port"),
    ({"port": "CONSOLE", "host": "0.0.0.0"}, "listeners.wellknown_http.port"),
    ({"acme_webroot": "var/www/html"}, "listeners.wellknown_http.acme_webroot"),
    ({"max_per_client": 0}, "listeners.wellknown_http.max_per_client"),
    ({"wellknown": "OFF"}, "listeners.wellknown_http"),
])
def test_bad_config_is_refused_before_listening(plain: Plain, tmp_path: Path, change: dict[str, object],
                                                key: str) -> None:
    data = tomllib.loads(plain.config.read_text())
    table = data["listeners"]["wellknown_http"]
    ports = {"HTTPS": data["listeners"]["wellknown"]["port"], "CONSOLE": data["listeners"]["console"]["port"]}
    for k, v in change.items():
        if k == "wellknown":
            data["listeners"]["wellknown"]["enabled"] = False
        else:
            table[k] = ports.get(v, v) if isinstance(v, str) else v
    bad = tmp_path / "bad.toml"
    bad.write_text(tomli_w.dumps(data))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + r"\b"):
        load(bad)
    r = subprocess.run([sys.executable, "-m", "services.console", "-c", str(bad)], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and key in r.stderr and "listening" not in r.stdout, r.stdout + r.stderr


def test_off_without_its_table(plain: Plain, tmp_path: Path) -> None:
    data = tomllib.loads(plain.config.read_text())
    del data["listeners"]["wellknown_http"]
    off = tmp_path / "off.toml"
    off.write_text(tomli_w.dumps(data))
    assert not load(off).listeners.wellknown_http.enabled


@pytest.mark.slow
@pytest.mark.peers
def test_certbot_webroot_issuance_from_pebble_through_the_listener(tmp_path: Path) -> None:
    """certbot --webroot writes the challenge; pebble's validation fetches it from this listener on its HTTP-01 port."""
    require("certbot")
    box = make_box(tmp_path / "box")
    webroot = tmp_path / "webroot"
    webroot.mkdir()
    name = "mx.example.test"
    with running_pebble(tmp_path / "pebble") as peb:
        box.config_file.write_text(tomli_w.dumps(_with_http(box.config_file, peb.http01_port, webroot)))
        proc = _start(box.config_file, tmp_path / "console.log")
        try:
            wait_port("127.0.0.1", peb.http01_port)
            cb = tmp_path / "certbot"
            r = subprocess.run(
                ["certbot", "certonly", "--server", peb.directory, "--config-dir", str(cb / "etc"), "--work-dir",
                 str(cb / "work"), "--logs-dir", str(cb / "log"), "--non-interactive", "--agree-tos",
                 "--register-unsafely-without-email", "--webroot", "-w", str(webroot), "--cert-name", name,
                 "-d", name], capture_output=True, text=True, timeout=180,
                env=dict(os.environ, REQUESTS_CA_BUNDLE=str(peb.ca)))
            assert r.returncode == 0, r.stdout + r.stderr + (tmp_path / "console.log").read_text(errors="replace")
        finally:
            _stop(proc)
    leaf = x509.load_pem_x509_certificate((cb / "etc" / "live" / name / "fullchain.pem").read_bytes())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sans == [name]
    # The validation came through this listener: its log has pebble's GET of the token.
    assert "/.well-known/acme-challenge/" in (tmp_path / "console.log").read_text(errors="replace")
