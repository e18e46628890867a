"""Two running boxes share one real PostgreSQL (accounts) and one Redis (limiter) (issue 16 items 4, 7).

- an account added, disabled or held through one box's CLI is accepted or refused by the other
  box's relay (SMTP AUTH, MAIL) and access service (IMAP) at once;
- PostgreSQL stopped: new IMAP logins `NO [UNAVAILABLE]`, POP3 `-ERR [SYS/TEMP]`, SMTP AUTH `454 4.7.0`,
  while an IMAP session logged in before goes on; `appliance status` and the relay's metrics show the
  alarm; PostgreSQL started again: everything works with no restart of the services.

The boxes are two development boxes on loopback (not network namespaces; see docs/fleet.md).
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import smtplib
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator

import pytest
import tomli_w

from tests.fleet.pg_server import PgServer
from tests.fleet.two_boxes import TwoBoxes, two_boxes
from tests.helpers.box import Box

PASSWORD = "correct horse battery"


def _tune(_name: str, box: Box, _boxes: TwoBoxes) -> None:
    data = tomllib.loads(box.config_file.read_text())
    # Refusals here come from the accounts, not the limits (those are tests/ratelimit and test_redis_*).
    data.setdefault("limits", {})["abuse_brake"] = {"enabled": False}
    data["limits"]["classes"] = {"default": {"messages_per_minute": 600, "burst": 200, "per_day": 0}}
    box.config_file.write_text(tomli_w.dumps(data))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PgServer, Box, Box]]:
    with two_boxes(tmp_path_factory.mktemp("fleet"), tune=_tune,
                   before=lambda f: f.a.add_user("alice", PASSWORD)) as f:
        yield f.pg, f.a, f.b


def imap_login(box: Box, user: str, password: str = PASSWORD) -> imaplib.IMAP4:
    m = imaplib.IMAP4_SSL(box.host("imaps"), box.port("imaps"), ssl_context=box.client_tls(), timeout=30)
    try:
        m.login(user, password)
    except BaseException:
        with contextlib.suppress(Exception):
            m.logout()
        raise
    return m


def smtp_auth(box: Box, user: str, password: str = PASSWORD) -> tuple[int, bytes]:
    """The relay's answer to AUTH PLAIN on the submission port (after STARTTLS)."""
    with smtplib.SMTP(box.host("submission"), box.port("submission"), timeout=30) as s:
        s.starttls(context=box.client_tls())
        s.ehlo("client.test")
        try:
            return s.login(user, password)
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code, exc.smtp_error


def mail_from(box: Box, user: str) -> tuple[int, bytes]:
    with smtplib.SMTP(box.host("submission"), box.port("submission"), timeout=30) as s:
        s.starttls(context=box.client_tls())
        s.ehlo("client.test")
        s.login(user, PASSWORD)
        return s.mail(user)


RECOVERY = 10.0  # seconds the services may take to use a database that is back (RETRY_INTERVAL is 1 s)


def _within(seconds: float, ok: Callable[[], bool]) -> bool:
    """Whether OK() becomes true within SECONDS (tried every 0.2 s)."""
    deadline = time.monotonic() + seconds
    while not ok():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _imap_ok(box: Box, user: str) -> bool:
    try:
        imap_login(box, user).logout()
    except imaplib.IMAP4.error:
        return False
    return True


def relay_metric(box: Box, name: str) -> float | None:
    cfg = box.cfg
    body = urllib.request.urlopen(f"http://{cfg.listeners.metrics.host}:{cfg.listeners.metrics.port}/metrics",
                                  timeout=10).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_an_account_changed_through_one_box_is_accepted_or_refused_on_the_other_at_once(
        fleet: tuple[PgServer, Box, Box]) -> None:
    _, a, b = fleet
    dave = a.add_user("dave", PASSWORD)  # through box A's CLI; Maildir on A only (home boxes: not built)
    assert smtp_auth(b, dave)[0] == 235
    b.maildir(dave).mkdir(parents=True, exist_ok=True)  # so box B's IMAP has a mailbox to open
    for sub in ("cur", "new", "tmp"):
        (b.maildir(dave) / sub).mkdir(exist_ok=True)
    imap_login(b, dave).logout()
    # Disabled through box B: box A refuses the very next login, IMAP and SMTP alike.
    b.cli("user", "disable", dave)
    assert smtp_auth(a, dave)[0] == 535
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap_login(a, dave)
    b.cli("user", "enable", dave)
    assert smtp_auth(a, dave)[0] == 235
    # Held (what box A's abuse brake does) through A's store: box B's relay holds the next message.
    from appliance.accounts_pg import PgAccountStore

    store = PgAccountStore.from_config(a.cfg)
    try:
        store.hold(dave, "test hold")
    finally:
        store.close()
    code, text = mail_from(b, dave)
    assert code == 450 and b"on hold" in text
    a.cli("user", "release", dave)
    assert mail_from(b, dave)[0] == 250


def test_postgres_down_logins_are_temporary_failures_sessions_go_on_and_recovery_is_automatic(
        fleet: tuple[PgServer, Box, Box]) -> None:
    pg, a, _ = fleet
    alice = f"alice@{a.domain}"
    assert smtp_auth(a, alice)[0] == 235
    before = imap_login(a, alice)
    smtp = smtplib.SMTP(a.host("submission"), a.port("submission"), timeout=30)
    try:
        assert before.select("INBOX")[0] == "OK"
        smtp.starttls(context=a.client_tls())
        smtp.ehlo("client.test")
        smtp.login(alice, PASSWORD)
        pg.stop()
        try:
            # New logins: temporary answers, never "wrong password".
            with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\]"):
                imap_login(a, alice)
            p = poplib.POP3_SSL(a.host("pop3s"), a.port("pop3s"), context=a.client_tls(), timeout=30)
            p.user(alice)
            with pytest.raises(poplib.error_proto, match=r"SYS/TEMP"):
                p.pass_(PASSWORD)
            p.quit()
            code, text = smtp_auth(a, alice)
            assert (code, text[:5]) == (454, b"4.7.0")
            # An authenticated SMTP session's next message: the account is re-read for it, so a temporary 451.
            code, text = smtp.mail(alice)
            assert (code, text[:5]) == (451, b"4.3.0")
            # The session logged in before goes on: its mailbox is on this box, not in PostgreSQL.
            assert before.noop()[0] == "OK"
            assert before.select("INBOX")[0] == "OK"
            assert before.create("Kept")[0] == "OK"
            assert before.list()[0] == "OK"
            # The alarm: `appliance status` (asked now) and the relay's metric (from the AUTH just refused).
            st = a.status()
            assert st["accounts"]["backend"] == "shared" and "unavailable" in st["accounts"]["alarm"]
            assert a.cli("status", check=False).returncode == 1
            assert relay_metric(a, "appliance_accounts_store_up") == 0.0
        finally:
            pg.start()
        # Back: the services reconnect by themselves (after at most RETRY_INTERVAL without connect attempts).
        assert _within(RECOVERY, lambda: smtp_auth(a, alice)[0] == 235)
        assert _within(RECOVERY, lambda: _imap_ok(a, alice))
        assert relay_metric(a, "appliance_accounts_store_up") == 1.0
        assert a.status()["accounts"]["alarm"] is None
        assert before.noop()[0] == "OK"
        smtp.rset()
        assert smtp.mail(alice)[0] == 250
    finally:
        with contextlib.suppress(Exception):
            before.logout()
        with contextlib.suppress(Exception):
            smtp.quit()


def test_status_names_the_backend(fleet: tuple[PgServer, Box, Box]) -> None:
    _, a, _ = fleet
    assert "accounts: shared (PostgreSQL, state.postgres_url)" in a.cli("status", check=False).stdout
