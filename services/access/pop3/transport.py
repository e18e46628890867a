"""Socket options for POP3 connections."""

from __future__ import annotations

import socket
from typing import Any


def tcp_socket(transport: Any) -> socket.socket | None:
    """The TCP socket under TRANSPORT (under the TLS wrapper for implicit TLS), or None."""
    from twisted.internet import tcp

    t = transport
    for _ in range(3):
        if isinstance(t, tcp.Connection):
            return t.getHandle()  # type: ignore[no-any-return]
        t = getattr(t, "transport", None)
    return None


def set_nodelay(transport: Any) -> None:
    """Disable Nagle: a POP3 exchange is many small writes, and PIPELINING clients wait for each answer."""
    sock = tcp_socket(transport)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
