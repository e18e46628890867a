"""Doctor's certificate findings for the certificates operators really end up with: expired, for
another name, with the wrong key, from a CA nobody trusts, and fine but self-signed."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.config import Config, load
from appliance.doctor import exit_status
from appliance.doctor.local import check_certificate


@pytest.fixture(scope="module")
def config_file(dev_config: Path) -> Path:
    return dev_config


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey,
          names: list[str], days: float, ca: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(days=30)).not_valid_after(now + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if names:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def with_cert(config_file: Path, tmp_path: Path, chain: list[x509.Certificate],
              key: ec.EllipticCurvePrivateKey) -> Config:
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    key_file.write_bytes(_pem_key(key))
    data = tomllib.loads(config_file.read_text())
    data["tls"].update(cert=str(cert_file), key=str(key_file), source="certbot")
    p = tmp_path / "c.toml"
    p.write_text(tomli_w.dumps(data))
    return load(p)


def levels(cfg: Config) -> dict[str, tuple[str, str]]:
    return {f.check: (f.level, f.summary) for f in check_certificate(cfg)}


ALL_NAMES = ["mx.example.test", "mta-sts.example.test", "autoconfig.example.test", "autodiscover.example.test"]


def test_dev_box_certificate_is_fine_but_self_signed(config_file: Path) -> None:
    found = levels(load(config_file))
    assert found["certificate expiry"][0] == "ok"
    assert found["certificate chain"][0] == "warning" and "self-signed" in found["certificate chain"][1]
    assert "certificate key" not in found and "certificate name" not in found


def test_expired_certificate_is_an_error(config_file: Path, tmp_path: Path) -> None:
    key = _key()
    cfg = with_cert(config_file, tmp_path, [_cert("mx", key, "mx", key, ALL_NAMES, days=-1)], key)
    assert levels(cfg)["certificate expiry"][0] == "error"
    assert exit_status(check_certificate(cfg)) == 1


def test_nearly_expired_certificate_is_a_warning(config_file: Path, tmp_path: Path) -> None:
    key = _key()
    cfg = with_cert(config_file, tmp_path, [_cert("mx", key, "mx", key, ALL_NAMES, days=5)], key)
    assert levels(cfg)["certificate expiry"][0] == "warning"


def test_wrong_key_and_wrong_name_are_errors(config_file: Path, tmp_path: Path) -> None:
    key = _key()
    cfg = with_cert(config_file, tmp_path, [_cert("x", key, "x", key, ["other.example.test"], days=90)], _key())
    found = levels(cfg)
    assert found["certificate key"][0] == "error"
    assert found["certificate name"][0] == "error" and "other.example.test" in found["certificate name"][1]
    assert found["certificate names"][0] == "warning" and "mta-sts.example.test" in found["certificate names"][1]


def test_wildcard_covers_one_label(config_file: Path, tmp_path: Path) -> None:
    key = _key()
    cfg = with_cert(config_file, tmp_path, [_cert("w", key, "w", key, ["*.example.test"], days=90)], key)
    found = levels(cfg)
    assert "certificate name" not in found and "certificate names" not in found


def test_chain_from_an_untrusted_ca_is_an_error(config_file: Path, tmp_path: Path) -> None:
    ca_key, key = _key(), _key()
    ca = _cert("Test CA", ca_key, "Test CA", ca_key, [], days=365, ca=True)
    leaf = _cert("mx.example.test", key, "Test CA", ca_key, ALL_NAMES, days=90)
    found = levels(with_cert(config_file, tmp_path, [leaf, ca], key))
    assert found["certificate chain"][0] == "error" and "does not verify" in found["certificate chain"][1]
    assert found["certificate expiry"][0] == "ok"
