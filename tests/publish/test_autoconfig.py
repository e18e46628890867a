"""Client autoconfig as a client reads it: Thunderbird's config-v1.1.xml, Outlook's POX Autodiscover,
Apple's .mobileconfig, and the MTA-STS policy text."""

from __future__ import annotations

import plistlib
import re
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import tomli_w

from appliance.config import Config, load
from appliance.publish import autoconfig, mtasts

REQ_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
RESP_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"


def pox_request(email: str, schema: str = OUTLOOK_NS) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{REQ_NS}"><Request>'
            f"<EMailAddress>{email}</EMailAddress><AcceptableResponseSchema>{schema}</AcceptableResponseSchema>"
            "</Request></Autodiscover>").encode()


@pytest.fixture(scope="module")
def config_file(dev_config: Path) -> Path:
    return dev_config


@pytest.fixture(scope="module")
def cfg(config_file: Path) -> Config:
    return load(config_file)


def variant(config_file: Path, tmp_path: Path, **tables: dict) -> Config:
    data = tomllib.loads(config_file.read_text())
    for table, values in tables.items():
        sect = data
        for part in table.split("."):
            sect = sect.setdefault(part, {})
        sect.update(values)
    p = tmp_path / "variant.toml"
    p.write_text(tomli_w.dumps(data))
    return load(p)


def test_thunderbird_config_has_the_documented_elements(cfg: Config) -> None:
    root = ET.fromstring(autoconfig.thunderbird_xml(cfg, "alice@example.test"))
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider is not None and provider.get("id") == "example.test"
    assert [d.text for d in provider.findall("domain")] == ["example.test"]
    assert provider.findtext("displayName") and provider.findtext("displayShortName")
    incoming = provider.findall("incomingServer")
    outgoing = provider.findall("outgoingServer")
    # Preferred first: IMAP over implicit TLS, and submission over implicit TLS (RFC 8314).
    assert incoming[0].get("type") == "imap"
    assert incoming[0].findtext("port") == str(cfg.listeners.imaps.port)
    assert incoming[0].findtext("socketType") == "SSL"
    assert {s.get("type") for s in incoming} == {"imap", "pop3"}
    assert outgoing[0].get("type") == "smtp" and outgoing[0].findtext("port") == str(cfg.listeners.submissions.port)
    starttls = [s for s in incoming + outgoing if s.findtext("socketType") == "STARTTLS"]
    assert {s.findtext("port") for s in starttls} == {str(cfg.listeners.imap.port), str(cfg.listeners.pop3.port),
                                                     str(cfg.listeners.submission.port)}
    for s in incoming + outgoing:
        assert s.findtext("hostname") == "mx.example.test"
        assert s.findtext("username") == "%EMAILADDRESS%"
        assert s.findtext("authentication") == "password-cleartext"
        assert s.findtext("socketType") in ("SSL", "STARTTLS")  # never "plain": passwords stay in TLS


def test_thunderbird_config_leaves_out_disabled_listeners_and_refuses_foreign_domains(
        config_file: Path, tmp_path: Path) -> None:
    cfg = variant(config_file, tmp_path, **{"listeners.pop3": {"enabled": False}, "listeners.pop3s": {"enabled": False}})
    root = ET.fromstring(autoconfig.thunderbird_xml(cfg, ""))
    assert {s.get("type") for s in root.iter("incomingServer")} == {"imap"}
    with pytest.raises(ValueError, match="not a mail domain of this box"):
        autoconfig.thunderbird_xml(cfg, "bob@elsewhere.test")


def test_autodiscover_answers_a_pox_request(cfg: Config) -> None:
    body = autoconfig.autodiscover_xml(cfg, pox_request("Alice@example.test"))
    root = ET.fromstring(body)
    assert root.tag == f"{{{RESP_NS}}}Autodiscover"
    o = {"o": OUTLOOK_NS}
    assert root.findtext("o:Response/o:Account/o:AccountType", namespaces=o) == "email"
    assert root.findtext("o:Response/o:Account/o:Action", namespaces=o) == "settings"
    protocols = {p.findtext("o:Type", namespaces=o): p for p in root.findall("o:Response/o:Account/o:Protocol", o)}
    assert set(protocols) == {"IMAP", "POP3", "SMTP"}
    imap, smtp = protocols["IMAP"], protocols["SMTP"]
    assert imap.findtext("o:Server", namespaces=o) == "mx.example.test"
    assert imap.findtext("o:Port", namespaces=o) == str(cfg.listeners.imaps.port)
    assert imap.findtext("o:Encryption", namespaces=o) == "SSL"
    assert smtp.findtext("o:Port", namespaces=o) == str(cfg.listeners.submissions.port)
    for p in protocols.values():
        assert p.findtext("o:LoginName", namespaces=o) == "Alice@example.test"
        assert p.findtext("o:AuthRequired", namespaces=o) == "on"
        assert p.findtext("o:SPA", namespaces=o) == "off"
    # Outlook expects the Response schema as the default namespace of <Response>, not a prefix.
    assert f'<Response xmlns="{OUTLOOK_NS}">'.encode() in body


@pytest.mark.parametrize("body, why", [
    (b"not xml", "not XML"),
    (b"<Autodiscover/>", "not an Outlook Autodiscover request"),
    (pox_request(""), "no Request/EMailAddress"),
    (pox_request("alice@example.test", "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/"
                 "responseschema/2006"), "is not offered"),
    (pox_request("bob@elsewhere.test"), "not a mail domain of this box"),
    (pox_request("no-at-sign"), "not an email address"),
    (b'<!DOCTYPE x [<!ENTITY a "aaaa">]>' + pox_request("alice@example.test"), "DOCTYPE"),
    (b" " * (autoconfig.MAX_REQUEST + 1), "larger than"),
])
def test_autodiscover_refuses_bad_requests(cfg: Config, body: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        autoconfig.autodiscover_xml(cfg, body)


APPLE_REQUIRED = ("PayloadType", "PayloadVersion", "PayloadIdentifier", "PayloadUUID")
UUID = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$")


def test_mobileconfig_has_apples_required_keys(cfg: Config) -> None:
    profile = plistlib.loads(autoconfig.mobileconfig(cfg, "alice@example.test"))
    for key in (*APPLE_REQUIRED, "PayloadContent", "PayloadDisplayName"):
        assert key in profile, key
    assert profile["PayloadType"] == "Configuration" and profile["PayloadVersion"] == 1
    [mail] = profile["PayloadContent"]
    for key in APPLE_REQUIRED:
        assert key in mail, key
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert UUID.match(mail["PayloadUUID"]) and UUID.match(profile["PayloadUUID"])
    assert mail["PayloadUUID"] != profile["PayloadUUID"]
    assert mail["EmailAccountType"] == "EmailTypeIMAP"
    assert mail["EmailAddress"] == "alice@example.test"
    assert mail["IncomingMailServerHostName"] == "mx.example.test"
    assert mail["IncomingMailServerPortNumber"] == cfg.listeners.imaps.port
    assert mail["IncomingMailServerUseSSL"] is True
    assert mail["IncomingMailServerAuthentication"] == "EmailAuthPassword"
    assert mail["IncomingMailServerUsername"] == "alice@example.test"
    assert mail["OutgoingMailServerHostName"] == "mx.example.test"
    assert mail["OutgoingMailServerPortNumber"] == cfg.listeners.submissions.port
    assert mail["OutgoingMailServerUseSSL"] is True
    assert mail["OutgoingMailServerAuthentication"] == "EmailAuthPassword"
    # Re-downloading gives the same identifiers, so iOS replaces the profile instead of adding one.
    again = plistlib.loads(autoconfig.mobileconfig(cfg, "alice@example.test"))
    assert again["PayloadUUID"] == profile["PayloadUUID"]
    other = plistlib.loads(autoconfig.mobileconfig(cfg, "bob@example.test"))
    assert other["PayloadUUID"] != profile["PayloadUUID"]
    with pytest.raises(ValueError):
        autoconfig.mobileconfig(cfg, "bob@elsewhere.test")


def test_mobileconfig_falls_back_to_pop3_without_imap(config_file: Path, tmp_path: Path) -> None:
    cfg = variant(config_file, tmp_path, **{"listeners.imap": {"enabled": False}, "listeners.imaps": {"enabled": False}})
    [mail] = plistlib.loads(autoconfig.mobileconfig(cfg, "alice@example.test"))["PayloadContent"]
    assert mail["EmailAccountType"] == "EmailTypePOP"
    assert mail["IncomingMailServerPortNumber"] == cfg.listeners.pop3s.port


def test_mta_sts_policy_follows_rfc_8461(config_file: Path, cfg: Config, tmp_path: Path) -> None:
    text = mtasts.policy_text(cfg)
    lines = text.split("\r\n")
    assert lines[0] == "version: STSv1"  # RFC 8461 3.2: version first
    fields = dict(line.split(": ", 1) for line in lines if line)
    assert fields == {"version": "STSv1", "mode": "testing", "mx": "mx.example.test", "max_age": "604800"}
    assert re.fullmatch(r"[A-Za-z0-9]{1,32}", mtasts.policy_id(cfg))
    enforce = variant(config_file, tmp_path, publish={"mta_sts_mode": "enforce"})
    assert "mode: enforce\r\n" in mtasts.policy_text(enforce)
    # The id changes with the policy (RFC 8461 3.1) and only then.
    assert mtasts.policy_id(enforce) != mtasts.policy_id(cfg)
    assert mtasts.policy_id(load(config_file)) == mtasts.policy_id(cfg)


@pytest.mark.parametrize("publish, key", [
    ({"mta_sts_mode": "strict"}, "publish.mta_sts_mode"),
    ({"mta_sts_max_age": 60}, "publish.mta_sts_max_age"),
    ({"addresses": ["mx.example.test"]}, "publish.addresses"),
    ({"report_address": "nobody"}, "publish.report_address"),
])
def test_bad_publish_config_is_refused_naming_the_key(config_file: Path, tmp_path: Path, publish: dict,
                                                       key: str) -> None:
    data = tomllib.loads(config_file.read_text())
    data["publish"] = publish
    p = tmp_path / "bad.toml"
    p.write_text(tomli_w.dumps(data))
    r = subprocess.run([sys.executable, "-m", "appliance", "-c", str(p), "dns"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert f"key {key}" in r.stderr and r.stdout == ""
