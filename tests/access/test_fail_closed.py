"""With the relay down, logins fail closed with a temporary answer (its limiter cannot be asked)."""

from __future__ import annotations

import imaplib
import poplib

import pytest

from appliance.supervision import proxy
from tests.access.conftest import PASSWORD
from tests.helpers.box import Box


def test_logins_fail_closed_while_the_relay_is_down(access_box: Box) -> None:
    supervisor = proxy(access_box.cfg).supervisor
    supervisor.stopProcess("relay")
    try:
        m = imaplib.IMAP4_SSL(access_box.host("imaps"), access_box.port("imaps"), ssl_context=access_box.client_tls())
        with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\]"):
            m.login(f"alice@{access_box.domain}", PASSWORD)  # the right password: still no
        m.logout()
        p = poplib.POP3_SSL(access_box.host("pop3s"), access_box.port("pop3s"), context=access_box.client_tls(),
                            timeout=30)
        p.user(f"alice@{access_box.domain}")
        with pytest.raises(poplib.error_proto, match=r"SYS/TEMP"):
            p.pass_(PASSWORD)
        p.quit()
    finally:
        supervisor.startProcess("relay")
