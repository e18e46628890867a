"""Two servers for every conformance test: a private Dovecot (the reference) and the running box.

A test passes on Dovecot first (that validates the test against a mature implementation),
then must pass on the box. Each test gets a fresh account (``server.account()``) so no test
depends on another's mail. Where Dovecot 2.3 knowingly deviates from an RFC, the test marks
only the Dovecot parameter (``dovecot_deviates``); the box side always runs.
"""

from __future__ import annotations

import itertools
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.access.conftest import _tune_config, running_box
from tests.access.dovecot import BOX_FOLDERS_CONF, Dovecot, _hash, start_dovecot
from tests.conformance.client import Conn
from tests.conftest import require
from tests.helpers.box import Box, make_box

PASSWORD = "correct horse battery"

# The reference with every extension the box advertises: QUOTA (quota plugin), COMPRESS=DEFLATE
# (zlib plugin; Dovecot 2.3 names it imap_zlib), and the box's folder set.
DOVECOT_CONF = r"""
mail_plugins = $mail_plugins quota zlib
protocol imap {
  mail_plugins = $mail_plugins imap_quota imap_zlib
}
plugin {
  quota = maildir:User quota
  quota_rule = *:storage=1G
}
""" + BOX_FOLDERS_CONF


@dataclass
class Server:
    name: str
    host: str
    port: int
    ctx: ssl.SSLContext
    new_login: Callable[[], str]
    box: Box | None = None
    conns: list[Conn] = field(default_factory=list)

    def give_quota(self, login: str) -> None:
        """The reference's quota_rule (1 GiB) for LOGIN (Dovecot's accounts all have it)."""
        if self.box is not None:
            self.box.cli("user", "quota", login, "--storage", "1G")

    def account(self) -> str:
        return self.new_login()

    def connect(self, login: str | None = None) -> Conn:
        """A new connection, logged in as LOGIN (or not logged in when LOGIN is None)."""
        c = Conn(self.host, self.port, self.ctx)
        self.conns.append(c)
        if login is not None:
            c.login(login, PASSWORD)
        return c

    def session(self) -> tuple[str, Conn]:
        login = self.account()
        return login, self.connect(login)


@pytest.fixture(scope="session")
def conf_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    box = make_box(tmp_path_factory.mktemp("conformance"))
    _tune_config(box)
    with running_box(box):
        yield box


POOL = 400  # Dovecot accounts made at start (a passwd-file changed under it is re-read only lazily)


@pytest.fixture(scope="session")
def conf_dovecot(conf_box: Box) -> Iterator[Dovecot]:
    require("dovecot", "doveadm")
    hashed = _hash(PASSWORD)
    users = {f"u{i}": PASSWORD for i in range(POOL)}
    dv = start_dovecot(users, conf_box.cfg.tls.cert, conf_box.cfg.tls.key, hashes=dict.fromkeys(users, hashed),
                       extra_conf=DOVECOT_CONF)
    yield dv
    dv.stop()


_counter = itertools.count(1)


def _dovecot_login(dv: Dovecot) -> str:
    n = next(_counter)
    assert n < POOL, "raise POOL: more tests than Dovecot accounts"
    return f"u{n}"


def _box_login(box: Box) -> str:
    return box.add_user(f"c{next(_counter)}", PASSWORD)


@pytest.fixture(params=["dovecot", "box"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    box: Box = request.getfixturevalue("conf_box")
    if request.param == "dovecot":
        dv: Dovecot = request.getfixturevalue("conf_dovecot")
        srv = Server("dovecot", "127.0.0.1", dv.imap_port, box.client_tls(), lambda: _dovecot_login(dv))
    else:
        srv = Server("box", box.host("imap"), box.port("imap"), box.client_tls(), lambda: _box_login(box), box)
    yield srv
    for c in srv.conns:
        c.close()


def dovecot_deviates(request: pytest.FixtureRequest, server: Server, reason: str) -> None:
    """Dovecot 2.3.19 knowingly deviates here: an expected failure on Dovecot only (never the box)."""
    if server.name == "dovecot":
        request.applymarker(pytest.mark.xfail(reason=f"Dovecot 2.3.19 deviates: {reason}", strict=True))


MESSAGES = Path(__file__).parent / "messages"
