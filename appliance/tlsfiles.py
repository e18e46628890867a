"""Key and certificate files: self-signed fallback, DKIM keys, expiry and SPKI pins."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from appliance import fsutil


def _write_private(path: Path, data: bytes) -> None:
    # Created 0600 (O_EXCL, fresh temporary name): a key is never readable by others, not even
    # between creation and rename, and a leftover from a crash never lends it its old mode.
    path.parent.mkdir(parents=True, exist_ok=True)
    fsutil.atomic_write(path, data, mode=0o600)


def make_self_signed(cert_path: Path, key_path: Path, names: list[str], days: int = 825) -> None:
    """Write a self-signed ECDSA P-256 certificate for NAMES (DNS names or IP addresses)."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_private(
        key_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    fsutil.atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def make_dkim_key(key_path: Path, bits: int = 2048) -> str:
    """Write an RSA DKIM key; return the DNS TXT record value (``v=DKIM1; k=rsa; p=...``)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    _write_private(
        key_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()),
    )
    return dkim_txt_record(key_path)


def dkim_txt_record(key_path: Path) -> str:
    import base64

    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def load_cert(path: str | Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def cert_expiry(path: str | Path) -> dt.datetime | None:
    try:
        return load_cert(path).not_valid_after_utc
    except (OSError, ValueError):
        return None


def spki_sha256(cert: x509.Certificate | bytes) -> str:
    """Hex SHA-256 of the certificate's SubjectPublicKeyInfo (the registry's pin format).

    Accepts a parsed certificate or DER bytes (as ``ssl.SSLSocket.getpeercert(True)`` returns).
    """
    if isinstance(cert, bytes):
        cert = x509.load_der_x509_certificate(cert)
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()
