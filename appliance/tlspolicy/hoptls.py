"""What TLS one MX host must have, and the check after the handshake.

The handshake itself does not verify (CERT_NONE, TLS 1.2 or later): the peer's chain
is checked here, before EHLO is repeated, so nothing of the message is sent to a host
that fails, and the failure has a reason a TLS-RPT report can name (RFC 8460 4.3).

- ``dane`` (RFC 7672 3.1): DANE-EE(3) matches the leaf, no name and no expiry check;
  DANE-TA(2) matches a certificate the server sent (RFC 7671 5.2.2: it MUST send it)
  and the chain from it must verify for the MX host name (RFC 7672 3.2.2). With no
  usable TLSA record (only 0/1 usages or unknown parameters, RFC 7672 3.1.3) TLS is
  still mandatory but unauthenticated (RFC 7672 2.2).
- ``sts`` (RFC 8461 4.2): the chain must verify (PKIX) against the CA bundle, for the
  MX host name. ``enforce`` defers on failure; ``testing`` only reports (RFC 8461 5).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import DNSName, PolicyBuilder, Store, VerificationError

from appliance.tlspolicy import tlsrpt

SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True)
class Tlsa:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        # RFC 7672 3.1.3: PKIX-TA(0) and PKIX-EE(1) MUST NOT be used for SMTP.
        return self.usage in (2, 3) and self.selector in (0, 1) and self.mtype in (0, 1, 2)

    def text(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"

    def matches(self, cert: x509.Certificate) -> bool:
        """RFC 6698 2.1.2-2.1.3: the selected part (0 full DER, 1 SPKI), hashed by the matching type."""
        if self.selector == 0:
            blob = cert.public_bytes(serialization.Encoding.DER)
        else:
            blob = cert.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
        digest = {0: blob, 1: hashlib.sha256(blob).digest(), 2: hashlib.sha512(blob).digest()}[self.mtype]
        return digest == self.data


class TlsFailure(Exception):
    def __init__(self, result_type: str, text: str) -> None:
        super().__init__(text)
        self.result_type, self.text = result_type, text


@dataclass(frozen=True)
class HopTls:
    kind: Literal["dane", "sts"]
    enforce: bool  # False: MTA-STS `testing`, failures are counted, never deferred
    domain: str  # the policy domain (the recipient's domain)
    mx_host: str
    tlsa: tuple[Tlsa, ...] = ()
    ca_file: str = ""
    policy_strings: tuple[str, ...] = ()
    report_db: str = ""  # TLS-RPT counts; empty: not counted

    @property
    def policy_type(self) -> str:
        return "tlsa" if self.kind == "dane" else "sts"

    def describe(self) -> str:
        if self.kind == "dane":
            return "DANE TLSA (RFC 7672)"
        return "MTA-STS enforce (RFC 8461)" if self.enforce else "MTA-STS testing (RFC 8461)"

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # verified by verify() after the handshake, before any mail
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8461 4.2 / RFC 7672 1.3: TLS 1.2 or later
        return ctx

    # --- results: each returns the text to defer with, or None to go on ---------------------

    def verify(self, sock: ssl.SSLSocket, address: str = "") -> str | None:
        try:
            self._check(peer_chain(sock))
        except TlsFailure as exc:
            return self._fail(exc.result_type, exc.text, address)
        self._count("", "", address)
        return None

    def no_starttls(self, address: str = "") -> str | None:
        return self._fail("starttls-not-supported", f"{self.mx_host} does not offer STARTTLS", address)

    def handshake_failed(self, error: str, address: str = "") -> None:
        self._fail("validation-failure", f"TLS handshake with {self.mx_host} failed: {error}", address)

    def _fail(self, result_type: str, text: str, address: str) -> str | None:
        self._count(result_type, text, address)
        return f"{self.describe()} for {self.domain}: {text}" if self.enforce else None

    def _count(self, result_type: str, detail: str, address: str) -> None:
        if self.report_db:
            tlsrpt.record(self.report_db, tlsrpt.Result(self.domain, self.policy_type, self.policy_strings,
                                                         self.mx_host, result_type, address, detail))

    def _check(self, chain: list[x509.Certificate]) -> None:
        if not chain:
            raise TlsFailure("validation-failure", f"{self.mx_host} sent no certificate")
        if self.kind == "dane":
            usable = [r for r in self.tlsa if r.usable]
            if not usable:
                return  # RFC 7672 2.2: encrypted, unauthenticated
            if any(r.usage == 3 and r.matches(chain[0]) for r in usable):
                return  # DANE-EE: the key is the authority (RFC 7672 3.1.1)
            for ta in (c for c in chain for r in usable if r.usage == 2 and r.matches(c)):
                _pkix(chain, self.mx_host, [ta])  # DANE-TA: a chain from the matched anchor (RFC 7672 3.1.2)
                return
            raise TlsFailure("validation-failure",
                             f"certificate of {self.mx_host} matches none of its TLSA records "
                             f"({'; '.join(r.text() for r in usable)})")
        _pkix(chain, self.mx_host, roots(self.ca_file))


def peer_chain(sock: ssl.SSLSocket) -> list[x509.Certificate]:
    """The chain as the server sent it, leaf first."""
    # SSLSocket.get_unverified_chain() is public from Python 3.13; 3.10-3.12 have it on _sslobj.
    raw = getattr(sock, "get_unverified_chain", None) or sock._sslobj.get_unverified_chain  # type: ignore[attr-defined]
    out = []
    for c in raw() or ():
        der = c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
        out.append(x509.load_der_x509_certificate(der))
    if not out:
        der = sock.getpeercert(binary_form=True)
        if der:
            out.append(x509.load_der_x509_certificate(der))
    return out


@functools.lru_cache(maxsize=8)
def roots(ca_file: str) -> list[x509.Certificate]:
    path = Path(ca_file or SYSTEM_CA)
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsFailure("certificate-not-trusted", f"cannot read CA bundle {path}: {exc}") from None


def _pkix(chain: list[x509.Certificate], host: str, anchors: list[x509.Certificate]) -> None:
    leaf = chain[0]
    now = dt.datetime.now(dt.UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise TlsFailure("certificate-expired", f"certificate of {host} is not valid now "
                         f"(valid {leaf.not_valid_before_utc:%Y-%m-%d} to {leaf.not_valid_after_utc:%Y-%m-%d})")
    if not _names_match(leaf, host):
        raise TlsFailure("certificate-host-mismatch", f"certificate of {host} is for {', '.join(_names(leaf))}")
    verifier = PolicyBuilder().store(Store(anchors)).time(now).build_server_verifier(DNSName(host))
    try:
        verifier.verify(leaf, chain[1:])
    except VerificationError as exc:
        raise TlsFailure("certificate-not-trusted", f"certificate of {host} does not verify: {exc}") from None


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.lower() for n in san.get_values_for_type(x509.DNSName)]


def _names_match(cert: x509.Certificate, host: str) -> bool:
    """RFC 6125 6.4: a DNS-ID equal to HOST, or a wildcard for exactly its leftmost label."""
    host = host.lower().rstrip(".")
    for name in _names(cert):
        if name == host or (name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]):
            return True
    return False
