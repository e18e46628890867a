"""Credential stuffing over IMAP and POP3: the access service's logins share the relay's per-account limit.

Real box (`appliance up`), real imaplib/poplib clients from 50 loopback addresses.
"""

from __future__ import annotations

import imaplib
import poplib
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.access.conftest import PASSWORD, running_box
from tests.helpers.box import Box, make_box

NEW = 5  # limits.auth_failures_per_account_new (the default)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    b = make_box(tmp_path_factory.mktemp("stuffing-access"))
    b.add_user("dana", PASSWORD)
    with running_box(b):
        yield b


class _IMAPFrom(imaplib.IMAP4_SSL):
    def __init__(self, box: Box, source: str) -> None:
        self.source = source
        super().__init__(box.host("imaps"), box.port("imaps"), ssl_context=box.client_tls(), timeout=30)

    def _create_socket(self, timeout: Any) -> Any:
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=None)


def _imap_login(box: Box, source: str, password: str) -> str:
    m = _IMAPFrom(box, source)
    try:
        typ, data = m.login(f"dana@{box.domain}", password)
        return f"{typ} {data[0].decode()}"
    except imaplib.IMAP4.error as exc:
        return f"NO {exc}"
    finally:
        m.shutdown()


class _POPFrom(poplib.POP3):
    def __init__(self, box: Box, source: str) -> None:
        self.source = source
        super().__init__(box.host("pop3"), box.port("pop3"), timeout=30)

    def _create_socket(self, timeout: Any) -> Any:
        return socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))


def _pop_login(box: Box, source: str, password: str) -> str:
    p = _POPFrom(box, source)
    try:
        p.stls(context=box.client_tls())
        p.user(f"dana@{box.domain}")
        return p.pass_(password).decode()
    except poplib.error_proto as exc:
        return str(exc)
    finally:
        p.close()


def test_imap_and_pop_stuffing_from_fifty_addresses(box: Box) -> None:
    home = "127.0.7.1"
    assert _imap_login(box, home, PASSWORD).startswith("OK")  # Dana logs in from home once
    replies = [_imap_login(box, f"127.0.8.{i}", "wrong password!") for i in range(1, 51)]
    assert all("AUTHENTICATIONFAILED" in r for r in replies[:NEW]), replies[:NEW]
    assert all("[LIMIT]" in r for r in replies[NEW:]), sorted(set(replies[NEW:]))  # temporary, per account
    # A new address must wait even with the right password, over IMAP and POP alike...
    assert "[LIMIT]" in _imap_login(box, "127.0.9.1", PASSWORD)
    assert "[SYS/TEMP]" in _pop_login(box, "127.0.9.2", PASSWORD)
    # ...but Dana at home is not locked out, over either protocol.
    assert _imap_login(box, home, PASSWORD).startswith("OK")
    assert _pop_login(box, home, PASSWORD).startswith("+OK")
