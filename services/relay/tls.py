"""TLS contexts of the relay's listeners."""

from __future__ import annotations

import ssl

from appliance.config import Config
from appliance.tlsfiles import spki_sha256


class TlsSetupError(Exception):
    """A certificate or key that cannot be loaded; ``str()`` is one line naming the file."""


def server_context(cfg: Config, *, request_client_cert: bool = False) -> ssl.SSLContext:
    """The box's certificate; with REQUEST_CLIENT_CERT the client is asked for one (port 25, pinned members).

    Python's ssl module cannot ask for a certificate without verifying it, so a
    member's client certificate must chain to a CA in the system store or in
    relay.ca_file; the SPKI pin is then checked on top (policy/client_cert.py).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.tls.cert, cfg.tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(f"tls.cert/tls.key ({cfg.tls.cert}, {cfg.tls.key}): cannot load: {exc}") from None
    if request_client_cert:
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        if cfg.relay.ca_file:
            try:
                ctx.load_verify_locations(cfg.relay.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise TlsSetupError(f"relay.ca_file ({cfg.relay.ca_file}): cannot load: {exc}") from None
    return ctx


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> tuple[str | None, str | None]:
    """(protocol and cipher for Received:, client certificate SPKI pin or None)."""
    if ssl_object is None:
        return None, None
    cipher = ssl_object.cipher()
    text = f"{ssl_object.version()} {cipher[0]}" if cipher else ssl_object.version()
    der = ssl_object.getpeercert(binary_form=True)
    return text, (spki_sha256(der) if der else None)
