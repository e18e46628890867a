"""The outbound TLS decisions on their own: MTA-STS policy text and cache, TLSA matching, PKIX failures named
as TLS-RPT result types, the TLS-RPT record. No network (the namespaced cases are in test_outbound_tls.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.tlspolicy import mtasts, tlsrpt
from appliance.tlspolicy.hoptls import HopTls, Tlsa, TlsFailure
from tests.internet.outbound_world import _cert, make_pki

GOOD = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.net\r\nmx: *.example.org\r\nmax_age: 86400\r\n"


def test_policy_is_parsed_and_patterns_match_one_label_only() -> None:
    p = mtasts.parse(GOOD, "abc")
    assert (p.mode, p.max_age, p.mx) == ("enforce", 86400, ("mx1.example.net", "*.example.org"))
    assert p.matches("MX1.example.net.") and p.matches("a.example.org")
    assert not p.matches("a.b.example.org") and not p.matches("example.org") and not p.matches("mx2.example.net")
    assert mtasts.parse(GOOD.replace("\r\n", "\n"), "abc").mx == p.mx  # LF-only lines tolerated


@pytest.mark.parametrize("text, why", [
    (GOOD.replace("STSv1", "STSv2"), "version"),
    (GOOD.replace("enforce", "strict"), "mode"),
    (GOOD.replace("86400", "31557601"), "max_age"),
    (GOOD.replace("86400", "soon"), "max_age"),
    ("version: STSv1\r\nmode: enforce\r\nmax_age: 86400\r\n", "no mx"),
    ("version STSv1\r\n", "colon"),
])
def test_bad_policies_are_refused_as_sts_policy_invalid(text: str, why: str) -> None:
    with pytest.raises(mtasts.PolicyError) as e:
        mtasts.parse(text, "x")
    assert e.value.result_type == "sts-policy-invalid" and why in e.value.text


def test_txt_record_needs_exactly_one_sts_record_with_an_id() -> None:
    assert mtasts.txt_id(["v=STSv1; id=20261201T1;", "v=spf1 -all"]) == "20261201T1"
    assert mtasts.txt_id(["v=STSv1; id=1", "v=STSv1; id=2"]) is None  # RFC 8461 3.1
    assert mtasts.txt_id(["v=STSv1; id=no-dashes"]) is None
    assert mtasts.txt_id(["v=STSv1;"]) is None


def test_cache_keeps_a_policy_for_its_max_age(tmp_path: Path) -> None:
    cache = mtasts.Cache(tmp_path / "sts.sqlite3")
    p = mtasts.parse(GOOD, "abc")
    cache.put("example.net", p, now=1000.0)
    assert cache.get("example.net", now=1000.0 + 86400) == p
    assert cache.get("example.net", now=1000.0 + 86401) is None
    assert cache.get("other.net", now=1000.0) is None


def _key_cert() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return _cert("mx.example.net", ("mx.example.net",), key, None, key, ca=False)


@pytest.mark.parametrize("selector, mtype", [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)])
def test_tlsa_selectors_and_matching_types(selector: int, mtype: int) -> None:
    cert, other = _key_cert(), _key_cert()
    blob = (cert.public_bytes(serialization.Encoding.DER) if selector == 0 else
            cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    data = {0: blob, 1: hashlib.sha256(blob).digest(), 2: hashlib.sha512(blob).digest()}[mtype]
    r = Tlsa(3, selector, mtype, data)
    assert r.matches(cert) and not r.matches(other)


def test_pkix_usages_are_not_usable_for_smtp() -> None:
    assert [Tlsa(u, 1, 1, b"").usable for u in (0, 1, 2, 3)] == [False, False, True, True]  # RFC 7672 3.1.3
    assert not Tlsa(3, 2, 1, b"").usable and not Tlsa(3, 1, 3, b"").usable


def _chain(pki_dir: Path, stem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((pki_dir / f"{stem}.crt").read_bytes())


def test_certificate_failures_get_their_tls_rpt_names(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", ("mta-sts.example.net",))
    chain = _chain(tmp_path / "pki", "dest")  # for mx1.test, mx3.test, mxta.test
    sts = HopTls("sts", True, "example.net", "mx1.test", ca_file=str(pki.ca_pem))
    sts._check(chain)  # valid
    with pytest.raises(TlsFailure) as e:
        HopTls("sts", True, "example.net", "mx9.test", ca_file=str(pki.ca_pem))._check(chain)
    assert e.value.result_type == "certificate-host-mismatch"
    other = make_pki(tmp_path / "other", ("x.test",))
    with pytest.raises(TlsFailure) as e:
        HopTls("sts", True, "example.net", "mx1.test", ca_file=str(other.ca_pem))._check(chain)
    assert e.value.result_type == "certificate-not-trusted"
    key = ec.generate_private_key(ec.SECP256R1())
    old = (x509.CertificateBuilder().subject_name(chain[0].subject).issuer_name(chain[0].subject)
           .public_key(key.public_key()).serial_number(1)
           .not_valid_before(dt.datetime(2020, 1, 1)).not_valid_after(dt.datetime(2021, 1, 1))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("mx1.test")]), critical=False)
           .sign(key, hashes.SHA256()))
    with pytest.raises(TlsFailure) as e:
        sts._check([old])
    assert e.value.result_type == "certificate-expired"
    # DANE-EE ignores names and dates (RFC 7672 3.1.1): the expired self-signed key still matches.
    spki = old.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    HopTls("dane", True, "example.net", "mx9.test", tlsa=(Tlsa(3, 1, 1, hashlib.sha256(spki).digest()),))._check([old])
    # DANE-TA: the anchor must be in the chain and the chain valid for the MX name.
    ta = Tlsa(2, 0, 1, hashlib.sha256(pki.ca_der).digest())
    HopTls("dane", True, "example.net", "mxta.test", tlsa=(ta,))._check(chain)
    with pytest.raises(TlsFailure):
        HopTls("dane", True, "example.net", "mxta.test", tlsa=(ta,))._check(chain[:1])
    with pytest.raises(TlsFailure):
        HopTls("dane", True, "example.net", "mx9.test", tlsa=(ta,))._check(chain)


def test_testing_mode_counts_but_never_defers(tmp_path: Path) -> None:
    db = tlsrpt.db_path(tmp_path)
    h = HopTls("sts", False, "example.net", "mx1.test", report_db=db)
    assert h.no_starttls("192.0.2.1") is None
    enforce = HopTls("sts", True, "example.net", "mx1.test", report_db=db)
    assert "does not offer STARTTLS" in (enforce.no_starttls("192.0.2.1") or "")
    day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    rep = tlsrpt.build(db, day, "example.net", organization="mx.test", contact="mailto:p@test", report_id="r1")
    (pol,) = rep["policies"]
    assert pol["summary"] == {"total-successful-session-count": 0, "total-failure-session-count": 2}
    assert pol["failure-details"][0]["result-type"] == "starttls-not-supported"
    assert pol["failure-details"][0]["receiving-ip"] == "192.0.2.1"


def test_rua_takes_mailto_addresses_of_the_one_tlsrpt_record() -> None:
    assert tlsrpt.ruas(["v=TLSRPTv1; rua=mailto:a@example.net,https://r.example.net/x,mailto:b@example.org"]) == [
        "a@example.net", "b@example.org"]
    assert tlsrpt.ruas(["v=TLSRPTv1; rua=mailto:a@x.test", "v=TLSRPTv1; rua=mailto:b@x.test"]) == []
    assert tlsrpt.ruas(["v=spf1 -all"]) == []
