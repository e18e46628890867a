"""The public well-known names on HTTPS (listeners.wellknown, services/console/wellknown.py), driven with
curl as a sending MTA, Thunderbird and Outlook would reach them: `--resolve NAME:PORT:127.0.0.1` and the
dev box's certificate as the CA, so every fetch verifies the certificate for the name asked."""

from __future__ import annotations

import json
import socket
import ssl
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
from appliance.publish import autoconfig, mtasts
from appliance.tlsfiles import make_self_signed
from appliance.tlspolicy import mtasts as relay_mtasts
from services.console.wellknown import names
from tests.console.conftest import require_curl
from tests.helpers.box import make_box, run_cli, wait_port
from tests.helpers.wait import closed_by_server, refused_while_held

REPO = Path(__file__).resolve().parents[2]
SECOND = "second.test"
PER_CLIENT = 3
LIFETIME = 3.0


@dataclass
class WellKnown:
    config: Path
    port: int
    cert: str
    hostname: str
    domains: list[str]

    def curl(self, name: str, path: str, *args: str, method: str = "GET") -> tuple[int, str, bytes]:
        """(HTTP status or 0 if none, content type, body) of https://NAME:PORT/PATH, verified for NAME."""
        cmd = [require_curl(), "-sS", "--max-time", "30", "--cacert", self.cert, "--resolve",
               f"{name}:{self.port}:127.0.0.1", "-X", method, "-o", "-", "-w", "\n%{http_code} %{content_type}",
               *args, f"https://{name}:{self.port}{path}"]
        r = subprocess.run(cmd, capture_output=True, timeout=60)
        body, _, tail = r.stdout.rpartition(b"\n")
        code, _, ctype = tail.decode().partition(" ")
        return int(code or 0), ctype, body


@pytest.fixture(scope="module")
def wk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WellKnown]:
    box = make_box(tmp_path_factory.mktemp("wellknown"))
    data = tomllib.loads(box.config_file.read_text())
    # What `appliance init --dev` wrote: the table, and a certificate naming the three hosts.
    assert data["listeners"]["wellknown"]["tls"] == "implicit"
    leaf = x509.load_pem_x509_certificate(Path(data["tls"]["cert"]).read_bytes())
    sans = set(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName))
    assert {f"mta-sts.{box.domain}", f"autoconfig.{box.domain}", f"autodiscover.{box.domain}"} <= sans
    # A second local domain, and a certificate for every name of both (as certbot would get).
    data["box"]["domains"].append(SECOND)
    data["listeners"]["wellknown"].update(max_per_client=PER_CLIENT, connection_lifetime=LIFETIME)
    box.config_file.write_text(tomli_w.dumps(data))
    cfg = load(box.config_file)
    make_self_signed(Path(cfg.tls.cert), Path(cfg.tls.key), ["localhost", "127.0.0.1", *names(cfg)])
    log = open(box.dir / "console.log", "ab")  # closed below
    proc = subprocess.Popen([sys.executable, "-m", "services.console", "-c", str(box.config_file)], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port("127.0.0.1", cfg.listeners.wellknown.port)
        yield WellKnown(box.config_file, cfg.listeners.wellknown.port, cfg.tls.cert, cfg.box.hostname,
                        list(cfg.box.domains))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_the_policy_on_each_domain_parses_with_the_relays_parser(wk: WellKnown) -> None:
    want = mtasts.policy_text(load(wk.config))
    for d in wk.domains:
        status, ctype, body = wk.curl(f"mta-sts.{d}", "/.well-known/mta-sts.txt")
        assert (status, ctype) == (200, "text/plain; charset=utf-8")
        assert body.decode() == want
        # What the relay itself fetches and believes (RFC 8461 3.3: PKIX for mta-sts.DOMAIN).
        policy = relay_mtasts.parse(relay_mtasts.fetch(d, "127.0.0.1", wk.cert, wk.port), "id1")
        assert policy.mx == (wk.hostname,) and policy.mode == "testing"


def test_thunderbird_autoconfig_in_both_path_forms(wk: WellKnown) -> None:
    cfg = load(wk.config)
    for path in ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml"):
        status, ctype, body = wk.curl(f"autoconfig.{SECOND}", path)
        assert status == 200 and ctype.startswith("application/xml"), (status, body)
        root = ET.fromstring(body)
        provider = root.find("emailProvider")
        assert provider is not None and provider.get("id") == SECOND
        assert [e.text for e in provider.findall("domain")] == wk.domains
        imap = provider.find("incomingServer[@type='imap']")
        assert imap is not None
        assert imap.findtext("hostname") == wk.hostname
        assert imap.findtext("port") == str(cfg.listeners.imaps.port)
        assert imap.findtext("socketType") == "SSL" and imap.findtext("username") == "%EMAILADDRESS%"
        smtp = provider.find("outgoingServer[@type='smtp']")
        assert smtp is not None and smtp.findtext("port") == str(cfg.listeners.submissions.port)
    # The address's own domain wins over the name asked.
    status, _, body = wk.curl(f"autoconfig.{SECOND}", f"/mail/config-v1.1.xml?emailaddress=bob@{wk.domains[0]}")
    assert status == 200 and ET.fromstring(body).find("emailProvider").get("id") == wk.domains[0]  # type: ignore[union-attr]


def _autodiscover_request(email: str) -> str:
    return (f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{autoconfig.AUTODISCOVER_REQUEST_NS}">'
            f"<Request><EMailAddress>{email}</EMailAddress><AcceptableResponseSchema>"
            f"{autoconfig.OUTLOOK_RESPONSE_NS}</AcceptableResponseSchema></Request></Autodiscover>")


@pytest.mark.parametrize("name", [f"autodiscover.{SECOND}", "HOSTNAME"])
def test_outlook_autodiscover_on_its_name_and_on_the_hostname(wk: WellKnown, name: str) -> None:
    name = wk.hostname if name == "HOSTNAME" else name
    body_in = _autodiscover_request(f"carol@{SECOND}")
    # Outlook varies the path's case.
    for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
        status, ctype, body = wk.curl(name, path, "-H", "Content-Type: text/xml", "--data-binary", body_in,
                                      method="POST")
        assert status == 200 and ctype.startswith("application/xml"), (status, body)
        ns = {"o": autoconfig.OUTLOOK_RESPONSE_NS}
        protocols = ET.fromstring(body).findall(".//o:Protocol", ns)
        types = [p.findtext("o:Type", namespaces=ns) for p in protocols]
        assert "IMAP" in types and "SMTP" in types, body
        assert {p.findtext("o:Server", namespaces=ns) for p in protocols} == {wk.hostname}
    # A GET is the wrong method here.
    status, _, _ = wk.curl(name, "/autodiscover/autodiscover.xml")
    assert status == 405


def test_console_paths_and_other_names_are_not_found(wk: WellKnown) -> None:
    d = wk.domains[0]
    for name in (f"mta-sts.{d}", f"autoconfig.{d}", wk.hostname):
        for path in ("/", "/login", "/admin", "/admin/accounts", "/account", "/static/console.css",
                     "/.well-known/mta-sts.txt/../login"):
            status, _, body = wk.curl(name, path)
            assert status == 404, (name, path, status, body)
    # The policy only on mta-sts.DOMAIN, and no name the box does not serve.
    assert wk.curl(f"autoconfig.{d}", "/.well-known/mta-sts.txt")[0] == 404
    assert wk.curl("localhost", "/.well-known/mta-sts.txt")[0] == 404
    assert wk.curl("localhost", "/login")[0] == 404
    # A wrong method on a served path: 405.
    assert wk.curl(f"mta-sts.{d}", "/.well-known/mta-sts.txt", method="POST")[0] == 405


def test_a_200_kib_body_is_refused_with_413(wk: WellKnown, tmp_path: Path) -> None:
    big = tmp_path / "big.xml"
    big.write_bytes(b"x" * 200 * 1024)
    status, _, body = wk.curl(f"autodiscover.{SECOND}", "/autodiscover/autodiscover.xml", "-H",
                              "Content-Type: text/xml", "--data-binary", f"@{big}", method="POST")
    assert status == 413, body


def test_oversize_headers_are_refused(wk: WellKnown) -> None:
    status, _, body = wk.curl(f"mta-sts.{SECOND}", "/.well-known/mta-sts.txt", "-H", "X-Padding: " + "a" * 20_000)
    # twisted.web answers 400 and closes; curl, still sending its headers, may see only the close.
    assert status in (0, 400), (status, body)
    assert b"STSv1" not in body
    # A normal request still works afterwards (the server is up; only that request was refused).
    assert wk.curl(f"mta-sts.{SECOND}", "/.well-known/mta-sts.txt")[0] == 200


def test_the_per_client_cap(wk: WellKnown) -> None:
    def hold() -> list[socket.socket]:
        # Each slot taken: a TLS handshake on each proves the server accepted (counted) it.
        ctx = ssl.create_default_context(cafile=wk.cert)
        return [ctx.wrap_socket(socket.create_connection(("127.0.0.1", wk.port), timeout=30),
                                server_hostname=f"mta-sts.{SECOND}") for _ in range(PER_CLIENT)]

    # ... so the next connection is dropped before any TLS (curl's status 0: no answer).
    assert refused_while_held(hold, lambda: wk.curl(f"mta-sts.{SECOND}", "/.well-known/mta-sts.txt")[0] == 0)
    # The slots come back once those connections are gone (a few tries: the close takes a moment).
    for _ in range(50):
        if wk.curl(f"mta-sts.{SECOND}", "/.well-known/mta-sts.txt")[0] == 200:
            break
    else:
        pytest.fail("the per-client slots did not come back after the connections closed")


def test_the_lifetime_cap_closes_a_silent_connection(wk: WellKnown) -> None:
    # Connected, not even a TLS ClientHello: the server closes it when its lifetime is over.
    with socket.create_connection(("127.0.0.1", wk.port), timeout=30) as s:
        assert closed_by_server(s)


@pytest.mark.parametrize(("change", "key"), [
    ({"tls": "starttls"}, "listeners.wellknown.tls"),
    ({"port": "CONSOLE"}, "listeners.wellknown.port"),
    ({"host": "mta-sts.example.test"}, "listeners.wellknown.host"),
    ({"host": "0.0.0.0", "port": "CONSOLE"}, "listeners.wellknown.port"),
])
def test_bad_config_is_refused_before_listening(wk: WellKnown, tmp_path: Path, change: dict[str, object],
                                                key: str) -> None:
    data = tomllib.loads(wk.config.read_text())
    table = data["listeners"]["wellknown"]
    table.update({k: data["listeners"]["console"]["port"] if v == "CONSOLE" else v for k, v in change.items()})
    bad = tmp_path / "bad.toml"
    bad.write_text(tomli_w.dumps(data))
    with pytest.raises(ConfigError, match=key):
        load(bad)
    r = subprocess.run([sys.executable, "-m", "services.console", "-c", str(bad)], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and key in r.stderr and "listening" not in r.stdout, r.stdout + r.stderr


def test_off_without_its_table_and_listed_in_status(wk: WellKnown, tmp_path: Path) -> None:
    data = tomllib.loads(wk.config.read_text())
    del data["listeners"]["wellknown"]
    plain = tmp_path / "plain.toml"
    plain.write_text(tomli_w.dumps(data))
    assert not load(plain).listeners.wellknown.enabled
    endpoints = {e["name"]: e for e in json.loads(run_cli(wk.config, "status", "--json", check=False).stdout)[
        "endpoints"]}
    assert endpoints["wellknown"] == {"name": "wellknown", "service": "console", "host": "127.0.0.1",
                                      "port": wk.port, "tls": "implicit", "enabled": True}
    assert not {e["name"]: e for e in json.loads(run_cli(plain, "status", "--json", check=False).stdout)[
        "endpoints"]}["wellknown"]["enabled"]


def test_doctor_fetches_every_name_with_the_certificate_verified(wk: WellKnown) -> None:
    r = run_cli(wk.config, "doctor", "--json", check=False)
    found = {f["check"]: f for f in json.loads(r.stdout)}
    for d in wk.domains:
        for check in (f"mta-sts policy {d}", f"autoconfig {d}", f"autodiscover {d}"):
            assert found[check]["level"] == "ok", found[check]
            assert "certificate verified" in found[check]["summary"]
    # On loopback and not port 443: said, as a warning.
    assert found["mta-sts reachable"]["level"] == "warning"
    assert found["listener wellknown"]["level"] == "ok", found["listener wellknown"]


def test_doctor_says_when_the_certificate_does_not_name_a_domains_names(wk: WellKnown, tmp_path: Path) -> None:
    # A domain added to the config but not yet to the certificate (nor to the running console).
    data = tomllib.loads(wk.config.read_text())
    data["box"]["domains"].append("third.test")
    added = tmp_path / "added.toml"
    added.write_text(tomli_w.dumps(data))
    found = {f["check"]: f for f in json.loads(run_cli(added, "doctor", "--json", check=False).stdout)}
    for check in ("mta-sts policy third.test", "autoconfig third.test", "autodiscover third.test"):
        assert found[check]["level"] == "error", found[check]
        assert "does not verify for" in found[check]["summary"], found[check]
    assert found["mta-sts policy second.test"]["level"] == "ok"


def test_the_per_client_cap_counts_ipv6_by_its_64() -> None:
    from services.console.wellknown import client_key

    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == client_key("192.0.2.7") == "192.0.2.7"
