"""TLS contexts of the relay's listeners."""

from __future__ import annotations

import ssl

from appliance.config import Config
from appliance.tlsfiles import spki_sha256


class TlsSetupError(Exception):
    """A certificate or key that cannot be loaded; ``str()`` is one line naming the file."""


def server_context(cfg: Config) -> ssl.SSLContext:
    """The box's certificate, TLS 1.2 or newer; no client certificate is asked for.

    (Members with SPKI pins get ``pinned_tls.PinnedClientCertContext`` instead.)
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.tls.cert, cfg.tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(f"tls.cert/tls.key ({cfg.tls.cert}, {cfg.tls.key}): cannot load: {exc}") from None
    return ctx


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> tuple[str | None, str | None]:
    """(protocol and cipher for Received:, client certificate SPKI pin or None)."""
    if ssl_object is None:
        return None, None
    cipher = ssl_object.cipher()
    text = f"{ssl_object.version()} {cipher[0]}" if cipher else ssl_object.version()
    der = ssl_object.getpeercert(binary_form=True)
    return text, (spki_sha256(der) if der else None)
