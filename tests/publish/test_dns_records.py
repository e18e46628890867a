"""`appliance dns`: the records are the box's own (checked with openssl, not with our code) and the
zone-file form parses as a zone."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import dns.rdatatype
import dns.zone
import pytest
import tomli_w

from appliance.config import load


def appliance(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", "-c", str(config), *args], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope="module")
def config_file(dev_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dns") / "appliance.toml"
    data = tomllib.loads(dev_config.read_text())
    data["box"]["domains"] = ["example.test", "second.test"]
    data["publish"] = {"addresses": ["192.0.2.25", "2001:db8::25"], "dmarc_policy": "reject"}
    data["listeners"]["pop3"]["enabled"] = False
    path.write_text(tomli_w.dumps(data))
    return path


def openssl(*args: str, data: bytes | None = None) -> bytes:
    r = subprocess.run(["openssl", *args], input=data, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def by_name(config_file: Path) -> dict[tuple[str, str], list[str]]:
    r = appliance(config_file, "dns", "--json")
    assert r.returncode == 0, r.stderr
    out: dict[tuple[str, str], list[str]] = {}
    for rec in json.loads(r.stdout):
        assert rec["why"], rec
        out.setdefault((rec["name"], rec["type"]), []).append(rec["value"])
    return out


def test_dkim_and_tlsa_records_are_the_boxs_keys(config_file: Path) -> None:
    cfg = load(config_file)
    recs = by_name(config_file)
    spki = openssl("pkey", "-in", cfg.dkim.key, "-pubout", "-outform", "DER")
    for domain in ("example.test", "second.test"):
        assert recs[(f"mail._domainkey.{domain}", "TXT")] == [f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"]
    cert_spki = openssl("pkey", "-pubin", "-outform", "DER",
                        data=openssl("x509", "-in", cfg.tls.cert, "-noout", "-pubkey"))
    want = f"3 1 1 {hashlib.sha256(cert_spki).hexdigest()}"
    for name in ("mx", "submission", "submissions"):
        port = getattr(cfg.listeners, name).port
        assert recs[(f"_{port}._tcp.mx.example.test", "TLSA")] == [want]


def test_every_record_kind_is_there(config_file: Path) -> None:
    cfg = load(config_file)
    recs = by_name(config_file)
    assert recs[("mx.example.test", "A")] == ["192.0.2.25"]
    assert recs[("mx.example.test", "AAAA")] == ["2001:db8::25"]
    assert recs[("25.2.0.192.in-addr.arpa", "PTR")] == ["mx.example.test."]
    for d in ("example.test", "second.test"):
        assert recs[(d, "MX")] == ["10 mx.example.test."]
        assert recs[(d, "TXT")] == ["v=spf1 mx -all"]
        assert recs[(f"_dmarc.{d}", "TXT")] == ["v=DMARC1; p=reject; rua=mailto:postmaster@example.test"]
        [sts] = recs[(f"_mta-sts.{d}", "TXT")]
        assert sts.startswith("v=STSv1; id=")
        assert recs[(f"_smtp._tls.{d}", "TXT")] == ["v=TLSRPTv1; rua=mailto:postmaster@example.test"]
        assert recs[(f"mta-sts.{d}", "CNAME")] == ["mx.example.test."]
        assert recs[(f"_imaps._tcp.{d}", "SRV")] == [f"0 1 {cfg.listeners.imaps.port} mx.example.test."]
        assert recs[(f"_submissions._tcp.{d}", "SRV")] == [f"0 1 {cfg.listeners.submissions.port} mx.example.test."]
        assert recs[(f"_submission._tcp.{d}", "SRV")] == [f"0 1 {cfg.listeners.submission.port} mx.example.test."]
        # RFC 6186 4: a disabled service is published as not offered.
        assert recs[(f"_pop3._tcp.{d}", "SRV")] == ["0 0 0 ."]


def test_zone_form_parses_as_a_zone_with_the_same_records(config_file: Path) -> None:
    r = appliance(config_file, "dns")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    # A comment saying why before every record.
    records = [i for i, line in enumerate(lines) if line and not line.startswith(";")]
    assert all(lines[i - 1].startswith("; ") for i in records)
    zone = dns.zone.from_text("$TTL 3600\n@ SOA ns. h. 1 1 1 1 1\n@ NS ns.\n" + r.stdout, origin=".",
                              relativize=False, check_origin=False)
    dkim = zone.get_rdataset("mail._domainkey.example.test.", dns.rdatatype.TXT)
    want = by_name(config_file)[("mail._domainkey.example.test", "TXT")][0]
    assert b"".join(dkim[0].strings).decode() == want  # long TXT split into <=255-octet strings and rejoined
    assert all(len(s) <= 255 for s in dkim[0].strings)
    assert len(records) == len(json.loads(appliance(config_file, "dns", "--json").stdout))


def test_unreadable_dkim_key_is_a_clear_error(config_file: Path, tmp_path: Path) -> None:
    data = tomllib.loads(config_file.read_text())
    data["dkim"]["key"] = str(tmp_path / "missing.key")
    bad = tmp_path / "bad.toml"
    bad.write_text(tomli_w.dumps(data))
    r = appliance(bad, "dns")
    assert r.returncode == 1 and r.stdout == ""
    assert "dkim.key" in r.stderr and "missing.key" in r.stderr


@pytest.mark.parametrize("upstream, term", [("192.0.2.7", "ip4:192.0.2.7"), ("2001:db8::7", "ip6:2001:db8::7"),
                                            ("relay.member.test", "a:relay.member.test")])
def test_edge_box_spf_allows_its_upstream(config_file: Path, tmp_path: Path, upstream: str, term: str) -> None:
    data = tomllib.loads(config_file.read_text())
    data["box"]["role"] = "edge"
    data["relay"]["upstream"] = {"host": upstream, "username": "edge", "password_file": str(tmp_path / "pw")}
    p = tmp_path / "edge.toml"
    p.write_text(tomli_w.dumps(data))
    spf = by_name(p)[("example.test", "TXT")]
    # An edge box's mail leaves through the upstream member's relay: its address must pass SPF.
    assert spf == [f"v=spf1 mx {term} -all"]
