#!{{ venv }}/bin/python
"""Exit 0 when CERT is a certificate for exactly NAMES (CN = the first, SAN = all), 1 otherwise.

tls.sls issues the self-signed certificate again when this fails: a box made from the image
carries the image's certificate (mx.example.test, made on its first boot) until its own
pillar names it (box.hostname and tls:names).
"""
import ipaddress
import sys

from cryptography import x509
from cryptography.x509.oid import NameOID


def names_of(path: str) -> tuple[str, set[str]]:
    with open(path, "rb") as fh:
        cert = x509.load_pem_x509_certificate(fh.read())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    found = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    found |= {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    return (str(cn[0].value) if cn else ""), found


def canonical(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower()


if __name__ == "__main__":
    cert, wanted = sys.argv[1], [canonical(n) for n in sys.argv[2:]]
    try:
        cn, sans = names_of(cert)
    except (OSError, ValueError, x509.ExtensionNotFound) as exc:
        print(f"{cert}: {exc}", file=sys.stderr)
        sys.exit(1)
    if cn.lower() != wanted[0] or {canonical(n) for n in sans} != set(wanted):
        print(f"{cert}: for {cn} {sorted(sans)}, wanted {wanted}", file=sys.stderr)
        sys.exit(1)
