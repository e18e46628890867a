"""Server-side TLS that asks for a client certificate and accepts any, so the SPKI pin decides.

Python's ``ssl`` module cannot request a client certificate without verifying
it against a CA, but a consortium member's certificate is trusted by its pin in
the registry (often a self-signed one), not by a CA. For port 25 connections
from members that list pins, STARTTLS therefore runs on pyOpenSSL with a verify
callback that accepts every certificate; ``policy/client_cert.py`` then refuses
MAIL unless the certificate's SPKI SHA-256 is one of the member's pins.

``PinnedClientCertContext.wrap_bio`` returns an object with the subset of
``ssl.SSLObject``'s interface that asyncio's ``SSLProtocol`` (which aiosmtpd
uses for STARTTLS) calls, moving bytes between asyncio's ``ssl.MemoryBIO``
pair and pyOpenSSL's memory BIO and translating pyOpenSSL's exceptions into
the ``ssl`` module's.
"""

from __future__ import annotations

import ssl
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from services.relay.tls import TlsSetupError

_CHUNK = 65536


def _accept_any(conn: SSL.Connection, cert: Any, errnum: int, depth: int, ok: int) -> bool:
    # Chain validity is not the question here: the registry's pin is (checked before MAIL).
    return True


class PinnedClientCertContext:
    """Stands in for an ``ssl.SSLContext`` in asyncio's SSLProtocol (server side only)."""

    verify_mode = ssl.CERT_OPTIONAL
    check_hostname = False

    def __init__(self, cert_file: str, key_file: str) -> None:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        try:
            ctx.use_certificate_chain_file(cert_file)
            ctx.use_privatekey_file(key_file)
            ctx.check_privatekey()
        except (OSError, SSL.Error) as exc:
            raise TlsSetupError(f"tls.cert/tls.key ({cert_file}, {key_file}): cannot load: {exc}") from None
        ctx.set_verify(SSL.VERIFY_PEER, _accept_any)
        # Required by OpenSSL when client certificates are requested and sessions resumed.
        ctx.set_session_id(b"appliance-mx")
        self._ctx = ctx

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = True,
                 server_hostname: str | None = None, session: Any = None) -> PinnedSSLObject:
        if not server_side:
            raise ValueError("PinnedClientCertContext is for the server side only")
        return PinnedSSLObject(SSL.Connection(self._ctx, None), incoming, outgoing)


class PinnedSSLObject:
    """The part of ``ssl.SSLObject`` that asyncio's SSLProtocol and the relay use."""

    server_side = True
    server_hostname = None

    def __init__(self, conn: SSL.Connection, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
        conn.set_accept_state()
        self._conn = conn
        self._in = incoming
        self._out = outgoing
        self._eof_passed = False

    # --- moving bytes ------------------------------------------------------------------------

    def _pump_in(self) -> None:
        data = self._in.read()
        if data:
            self._conn.bio_write(data)
        if self._in.eof and not self._eof_passed:
            self._eof_passed = True
            self._conn.bio_shutdown()

    def _pump_out(self) -> None:
        while True:
            try:
                data = self._conn.bio_read(_CHUNK)
            except SSL.WantReadError:
                return
            if not data:
                return
            self._out.write(data)

    def _call(self, fn: Any, *args: Any) -> Any:
        self._pump_in()
        try:
            return fn(*args)
        except SSL.WantReadError:
            raise ssl.SSLWantReadError("The operation did not complete (read)") from None
        except SSL.WantWriteError:
            raise ssl.SSLWantWriteError("The operation did not complete (write)") from None
        except SSL.ZeroReturnError:
            raise ssl.SSLZeroReturnError("TLS/SSL connection has been closed (EOF)") from None
        except SSL.SysCallError as exc:
            raise ssl.SSLEOFError(f"EOF in violation of protocol: {exc}") from None
        except SSL.Error as exc:
            raise ssl.SSLError(f"TLS error: {exc}") from None
        finally:
            self._pump_out()

    # --- ssl.SSLObject's interface ----------------------------------------------------------

    def do_handshake(self) -> None:
        self._call(self._conn.do_handshake)

    def read(self, n: int = 1024, buffer: Any = None) -> Any:
        try:
            data = self._call(self._conn.recv, n)
        except ssl.SSLZeroReturnError:
            data = b""  # close_notify: end of stream, as ssl.SSLObject.read reports it
        if buffer is None:
            return data
        buffer[: len(data)] = data
        return len(data)

    def write(self, data: bytes) -> int:
        return int(self._call(self._conn.send, bytes(data)))

    def unwrap(self) -> None:
        # Send our close_notify; the connection is being closed, so do not wait for the peer's.
        try:
            self._call(self._conn.shutdown)
        except ssl.SSLError:
            pass

    def pending(self) -> int:
        return int(self._conn.pending())

    def getpeercert(self, binary_form: bool = False) -> Any:
        cert = self._conn.get_peer_certificate(as_cryptography=True)
        if cert is None:
            return None
        if binary_form:
            return cert.public_bytes(Encoding.DER)
        return {}  # not validated by a CA: no parsed form, as ssl does for CERT_NONE

    def cipher(self) -> tuple[str, str, int] | None:
        name = self._conn.get_cipher_name()
        if name is None:
            return None
        return name, self._conn.get_cipher_version() or "", int(self._conn.get_cipher_bits() or 0)

    def version(self) -> str | None:
        return self._conn.get_protocol_version_name()

    def compression(self) -> None:
        return None

    def selected_alpn_protocol(self) -> None:
        return None

    def shared_ciphers(self) -> None:
        return None
