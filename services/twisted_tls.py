"""The box certificate as a Twisted TLS context factory (the access and console services share it).

TLS 1.2 or newer; the chain file and key are checked against each other at start, so a
mismatched pair stops the service before it listens.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer


@implementer(IOpenSSLContextFactory)
class TLSContext:
    """An old-style context factory (getContext) with the box certificate, TLS 1.2 or newer."""

    def __init__(self, cert: str, key: str) -> None:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_certificate_chain_file(cert)
        ctx.use_privatekey_file(key)
        ctx.check_privatekey()
        self._ctx = ctx

    def getContext(self) -> SSL.Context:
        return self._ctx
