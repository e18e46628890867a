"""Home boxes (issue 16 item 5): two running boxes share one real PostgreSQL; each account's Maildir
is on its home box, and the other box proxies IMAP logins and relays local mail there.

- mail sent to an account through the non-home box's relay lands in the home box's Maildir (over the
  internal route, STARTTLS verified by the fleet's CA), none on the non-home box;
- an IMAP login (Python imaplib) on the non-home box reads the mail stored on the home box, with
  the home box's UIDVALIDITY and UIDs, and the proxied session counts against the connection cap;
- `appliance user move` copies the Maildir with UIDVALIDITY, UIDs and flags kept and flips `home`;
- POP3 on the non-home box is proxied the same way;
- the home box down: the login on the other box is answered `NO [UNAVAILABLE]` (POP3 `-ERR [SYS/TEMP]`);
- bad `[fleet]` config is refused naming the key; `--home` must name a fleet box.

The two boxes are development boxes on loopback, like tests/fleet/test_pg_services.py (not
network namespaces; see docs/fleet.md "Home boxes").
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import poplib
import re
import smtplib
import socket
import sqlite3
import tomllib
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
import tomli_w

from appliance.config import ConfigError, load
from appliance.tlsfiles import load_cert, spki_sha256
from tests.fleet.two_boxes import TwoBoxes, two_boxes
from tests.helpers.box import Box, make_box
from tests.helpers.wait import wait_for

PASSWORD = "correct horse battery"


Fleet = TwoBoxes


def fleet_config(name: str, box: Box, boxes: TwoBoxes) -> None:
    """two_boxes' tune: `[fleet]` naming both boxes (each box's self-signed certificate is one of the
    fleet's CAs here), limits that never get in the way."""
    ca_file = box.dir.parent / "fleet-ca.pem"
    ca_file.write_text(Path(boxes.a.cfg.tls.cert).read_text() + Path(boxes.b.cfg.tls.cert).read_text())
    data = tomllib.loads(box.config_file.read_text())
    data.setdefault("limits", {})["abuse_brake"] = {"enabled": False}
    default = {"messages_per_minute": 600, "burst": 200, "per_day": 0, "access_connections_per_user_ip": 3}
    data["limits"]["classes"] = {"default": default, "one": {**default, "access_connections_per_user_ip": 1}}
    data["limits"]["access_connections_per_ip"] = 4  # not logged in, per client address
    data["fleet"] = {
        "box": name, "ca_file": str(ca_file),
        "boxes": {n: {"relay": f"127.0.0.1:{b.port('mx')}", "access": f"127.0.0.1:{b.port('imaps')}",
                      "pop3": f"127.0.0.1:{b.port('pop3s')}",
                      "spki_sha256": [spki_sha256(load_cert(b.cfg.tls.cert))]}
                  for n, b in (("a", boxes.a), ("b", boxes.b))},
    }
    box.config_file.write_text(tomli_w.dumps(data))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with two_boxes(tmp_path_factory.mktemp("homes"), tune=fleet_config, distinct_names=True,
                   before=lambda f: add_user(f.a, "sender", "a")) as f:
        yield f


def add_user(box: Box, local: str, home: str) -> str:
    address = f"{local}@{box.domain}"
    out = box.cli("user", "add", address, "--home", home, "--password-stdin", input=PASSWORD + "\n").stdout
    assert f"home {home}" in out
    return address


def send(via: Box, to: str, subject: str) -> None:
    """A customer (sender@, at home on box a) submits a message to TO through VIA's relay (port 587)."""
    sender = f"sender@{via.domain}"
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg.set_content(f"body of {subject}\n")
    with smtplib.SMTP(via.host("submission"), via.port("submission"), timeout=60) as s:
        s.starttls(context=via.client_tls())
        s.login(sender, PASSWORD)
        s.send_message(msg)


def in_maildir(box: Box, address: str, subject: str) -> list[Path]:
    root = box.maildir(address)
    return [p for sub in ("new", "cur") if (root / sub).is_dir() for p in (root / sub).iterdir()
            if f"Subject: {subject}".encode() in p.read_bytes()]


def imap_login(box: Box, user: str) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL(box.host("imaps"), box.port("imaps"), ssl_context=box.client_tls(), timeout=60)
    try:
        m.login(user, PASSWORD)
    except BaseException:
        with contextlib.suppress(Exception):
            m.shutdown()
        raise
    return m


@contextlib.contextmanager
def logged_in(box: Box, user: str) -> Iterator[imaplib.IMAP4_SSL]:
    m = imap_login(box, user)
    try:
        yield m
    finally:
        with contextlib.suppress(Exception):
            m.logout()


def mailbox_view(m: imaplib.IMAP4) -> tuple[int, list[tuple[int, str, str]]]:
    """(UIDVALIDITY, [(UID, FLAGS without \\Recent, Subject)]) of INBOX as the client sees it."""
    typ, _ = m.select("INBOX")
    assert typ == "OK"
    uidvalidity = int(m.untagged_responses["UIDVALIDITY"][0])
    typ, data = m.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK"
    out = []
    for item in data:
        if isinstance(item, tuple):
            head = item[0].decode()
            uid = int(re.search(r"UID (\d+)", head).group(1))  # type: ignore[union-attr]
            flags = re.search(r"FLAGS \(([^)]*)\)", head).group(1)  # type: ignore[union-attr]
            flags = " ".join(f for f in flags.split() if f != "\\Recent")  # \Recent is per session
            out.append((uid, flags, item[1].decode().strip().removeprefix("Subject: ")))
    return uidvalidity, sorted(out)


def test_mail_through_the_other_box_lands_on_the_home_box_and_imap_there_reads_it(fleet: Fleet) -> None:
    a, b = fleet.a, fleet.b
    alice = add_user(b, "alice", "b")
    assert "home: b" in a.cli("user", "show", alice).stdout
    assert "home box b: run `appliance user quota` there" in a.cli("user", "quota", alice).stdout
    assert f"{alice}  class=default quota=(on b) home=b" in a.cli("user", "list").stdout
    send(a, alice, "via box a")
    send(b, alice, "via box b")
    wait_for("both messages in alice's Maildir on box b",
             lambda: len(in_maildir(b, alice, "via box a")) == 1 and len(in_maildir(b, alice, "via box b")) == 1,
             timeout=120)
    assert not a.maildir(alice).exists(), "box a must not keep a Maildir for an account at home on b"

    # Through box a (proxied to b) the client sees box b's mailbox: same UIDVALIDITY, UIDs and messages.
    with logged_in(b, alice) as direct:
        at_home = mailbox_view(direct)
    m = imap_login(a, alice)
    try:
        # The home box's logged-in capabilities (imaplib does not refresh .capabilities after LOGIN).
        typ, data = m.capability()
        assert typ == "OK" and "IDLE" in data[0].decode().split()
        proxied = mailbox_view(m)
        assert proxied == at_home
        assert sorted(s for _, _, s in proxied[1]) == ["via box a", "via box b"]
        # A change made through the proxy is made on the home box.
        first_uid = proxied[1][0][0]
        assert m.uid("STORE", str(first_uid), "+FLAGS", r"(\Flagged)")[0] == "OK"
    finally:
        m.logout()
    with logged_in(b, alice) as direct:
        assert "\\Flagged" in mailbox_view(direct)[1][0][1]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{a.port('access_metrics')}/metrics", timeout=30).read()
    assert re.search(rb'access_home_proxy_total\{protocol="imap",result="ok"\} [1-9]', metrics), metrics[-2000:]
    # POP3 through box a is proxied to b as well: b's maildrop, both messages.
    pop = poplib.POP3_SSL(a.host("pop3s"), a.port("pop3s"), context=a.client_tls(), timeout=60)
    try:
        pop.user(alice)
        assert pop.pass_(PASSWORD).startswith(b"+OK")
        assert pop.stat()[0] == 2
        bodies = b"".join(b"\n".join(pop.retr(n)[1]) for n in (1, 2))
        assert b"Subject: via box a" in bodies and b"Subject: via box b" in bodies
        assert pop.quit().startswith(b"+OK")
    finally:
        with contextlib.suppress(Exception):
            pop.close()


def test_in_a_fleet_every_account_has_a_home(fleet: Fleet) -> None:
    a, b = fleet.a, fleet.b
    frank = f"frank@{a.domain}"
    a.cli("user", "add", frank, "--password-stdin", input=PASSWORD + "\n")  # no --home: the box it runs on
    assert "home: a (this box)" in a.cli("user", "show", frank).stdout
    assert "home: a\n" in b.cli("user", "show", frank).stdout
    # `user home` records where an existing Maildir is, copying nothing; an unknown box is refused.
    r = a.cli("user", "home", frank, "nosuch", check=False)
    assert r.returncode == 1 and "not a box of this fleet" in r.stderr
    assert "nothing copied" in a.cli("user", "home", frank, "b").stdout
    assert "home: b (this box)" in b.cli("user", "show", frank).stdout


def test_proxied_sessions_count_against_the_connection_cap(fleet: Fleet) -> None:
    a, b = fleet.a, fleet.b
    carol = add_user(b, "carol", "b")
    sessions = [imap_login(a, carol) for _ in range(3)]  # access_connections_per_user_ip = 3
    try:
        with pytest.raises(imaplib.IMAP4.error, match=r"UNAVAILABLE"):
            imap_login(a, carol)
        for m in sessions:
            assert m.noop()[0] == "OK"  # the proxied sessions go on
    finally:
        for m in sessions:
            m.logout()
    # Once they logged out the slots are free again.
    m = wait_for("a login after the proxied sessions ended", lambda: _try_login(a, carol), timeout=60)
    m.logout()


def _try_login(box: Box, user: str) -> imaplib.IMAP4_SSL | None:
    try:
        return imap_login(box, user)
    except imaplib.IMAP4.error:
        return None


def test_user_move_keeps_uids_and_flags_and_flips_home(fleet: Fleet) -> None:
    a, b = fleet.a, fleet.b
    dave = add_user(a, "dave", "a")
    for n in (1, 2, 3):
        send(b, dave, f"dave {n}")
    wait_for("dave's three messages on box a", lambda: all(in_maildir(a, dave, f"dave {n}") for n in (1, 2, 3)),
             timeout=120)
    m = imap_login(a, dave)
    try:
        uidvalidity, msgs = mailbox_view(m)
        assert m.uid("STORE", str(msgs[1][0]), "+FLAGS", r"(\Seen \Answered)")[0] == "OK"
        m.expunge()
        before = mailbox_view(m)
    finally:
        m.logout()
    assert before[0] == uidvalidity

    # The move is run on the current home box; the target's mail dir is on the same machine here.
    r = a.cli("user", "move", dave, "b", "--target-mail-dir", b.cfg.paths.mail_dir, check=False)
    assert r.returncode == 0, r.stderr
    assert "moved" in r.stdout and "UIDs kept" in r.stdout
    assert "home: b" in b.cli("user", "show", dave).stdout
    with logged_in(b, dave) as direct:
        assert mailbox_view(direct) == before  # same UIDVALIDITY, UIDs, flags
    with logged_in(a, dave) as proxied:  # box a now proxies dave to b
        assert mailbox_view(proxied) == before
    send(a, dave, "dave after the move")
    wait_for("new mail for dave on box b", lambda: in_maildir(b, dave, "dave after the move"), timeout=120)
    assert not in_maildir(a, dave, "dave after the move")
    # A second move to where it already is, or from a box that is not its home, is refused.
    r = a.cli("user", "move", dave, "b", "--target-mail-dir", b.cfg.paths.mail_dir, check=False)
    assert r.returncode != 0 and "its home is b" in r.stderr


# --- the client's address at the home box (Dovecot's proxy ID x-originating-ip) ---------------------


def imap_from(box: Box, source: str, user: str | None = None) -> imaplib.IMAP4_SSL:
    """An imaplib client to BOX's IMAPS from the loopback address SOURCE (a customer device), logged in
    as USER if given."""
    class FromSource(imaplib.IMAP4_SSL):
        def _create_socket(self, timeout: float | None) -> socket.socket:
            sock = socket.create_connection((self.host, self.port), timeout, source_address=(source, 0))
            return self.ssl_context.wrap_socket(sock, server_hostname=self.host)

    m = FromSource(box.host("imaps"), box.port("imaps"), ssl_context=box.client_tls(), timeout=60)
    if user is not None:
        try:
            m.login(user, PASSWORD)
        except BaseException:
            with contextlib.suppress(Exception):
                m.shutdown()
            raise
    return m


def access_log(box: Box) -> str:
    return "".join(p.read_text(errors="replace") for p in Path(box.cfg.paths.log_dir).glob("access*.log"))


def test_the_home_box_counts_and_logs_a_proxied_customer_by_its_own_address(fleet: Fleet) -> None:
    a, b = fleet.a, fleet.b
    dan = f"dan@{a.domain}"
    a.cli("user", "add", dan, "--home", "b", "--class", "one", "--password-stdin", input=PASSWORD + "\n")
    opened: list[imaplib.IMAP4_SSL] = []
    try:
        # Two devices of dan's (class "one": one session per address) through box a, from two addresses.
        # Box b sees each device's own address, so the second is not lumped with the first under box a's.
        opened.append(imap_from(a, "127.0.0.2", dan))
        opened.append(imap_from(a, "127.0.0.3", dan))
        for m in opened:
            assert m.select("INBOX")[0] == "OK"  # both sessions are served by box b
        # A device connecting to b directly from 127.0.0.2 meets the slot the proxied one holds there.
        with pytest.raises(imaplib.IMAP4.error, match=r"UNAVAILABLE.*user\+IP"):
            imap_from(b, "127.0.0.2", dan)
        wait_for("box b's log line of the proxied login",
                 lambda: f"imap login user={dan} ip=127.0.0.3 via=127.0.0.1" in access_log(b), timeout=60)
        wait_for("box a's log line of the login it proxied",
                 lambda: f"imap login user={dan} ip=127.0.0.2 proxied-to=b" in access_log(a), timeout=60)
    finally:
        for m in opened:
            with contextlib.suppress(Exception):
                m.logout()


def test_an_id_from_a_client_not_in_the_fleet_changes_nothing(fleet: Fleet) -> None:
    """access_connections_per_ip = 4: a client claiming other addresses in ID is still counted as itself."""
    b = fleet.b
    opened: list[imaplib.IMAP4_SSL] = []
    try:
        for n in range(4):
            m = imap_from(b, "127.0.0.4")
            opened.append(m)
            typ, _ = m.xatom("ID", f'("x-originating-ip" "10.1.2.{n}" "x-originating-port" "4{n}000")')
            assert typ == "OK"  # RFC 2971: informational, never an error
            assert m.noop()[0] == "OK"
        # The fifth from that address is refused at once (the cap counted 127.0.0.4, not the claims).
        with pytest.raises(imaplib.IMAP4.error, match=r"BYE \[UNAVAILABLE\] Too many connections from your"):
            imap_from(b, "127.0.0.4").shutdown()
        m = imap_from(b, "127.0.0.5")  # another address is not affected
        opened.append(m)
    finally:
        for m in opened:
            with contextlib.suppress(Exception):
                m.logout()


def test_a_fleet_box_id_is_believed_once_before_login_and_only_with_a_valid_ip(fleet: Fleet) -> None:
    """The test plays a fleet box (127.0.0.1 is every box's address here) talking to box b directly."""
    a, b = fleet.a, fleet.b
    eve = f"eve@{a.domain}"
    a.cli("user", "add", eve, "--home", "b", "--class", "one", "--password-stdin", input=PASSWORD + "\n")
    m = imap_from(b, "127.0.0.1")
    try:
        assert m.xatom("ID", '("x-originating-ip" "999.1.2.3")')[0] == "OK"  # not an IP: ignored, logged
        assert m.xatom("ID", '("x-originating-ip" "127.0.0.6" "x-originating-port" "40000")')[0] == "OK"
        assert m.xatom("ID", '("x-originating-ip" "127.0.0.7")')[0] == "OK"  # a second one: ignored
        m.login(eve, PASSWORD)
        wait_for("box b's log line of eve's login",
                 lambda: f"imap login user={eve} ip=127.0.0.6 via=127.0.0.1" in access_log(b), timeout=60)
        assert "x-originating-ip '999.1.2.3' is not an IP address" in access_log(b)
        # eve's one session per address is taken under 127.0.0.6 (not 127.0.0.1, not 127.0.0.7).
        with pytest.raises(imaplib.IMAP4.error, match=r"UNAVAILABLE.*user\+IP"):
            imap_from(b, "127.0.0.6", eve)
        imap_from(b, "127.0.0.7", eve).logout()
    finally:
        with contextlib.suppress(Exception):
            m.logout()


def pop3_from(box: Box, source: str) -> poplib.POP3_SSL:
    class FromSource(poplib.POP3_SSL):
        def _create_socket(self, timeout: float) -> socket.socket:
            sock = socket.create_connection((self.host, self.port), timeout, source_address=(source, 0))
            return self.context.wrap_socket(sock, server_hostname=self.host)

    return FromSource(box.host("pop3s"), box.port("pop3s"), context=box.client_tls(), timeout=60)


def test_a_proxied_pop3_login_is_counted_by_the_customers_address_at_home(fleet: Fleet) -> None:
    a, b = fleet.a, fleet.b
    fay = f"fay@{a.domain}"
    a.cli("user", "add", fay, "--home", "b", "--class", "one", "--password-stdin", input=PASSWORD + "\n")
    pop = pop3_from(a, "127.0.0.8")
    try:
        pop.user(fay)
        assert pop.pass_(PASSWORD).startswith(b"+OK")  # proxied to b, which was told 127.0.0.8 (XCLIENT)
        assert pop.stat()[0] == 0
        # fay's one session per address (IMAP and POP3 together) is taken at b under 127.0.0.8.
        with pytest.raises(imaplib.IMAP4.error, match=r"UNAVAILABLE.*user\+IP"):
            imap_from(b, "127.0.0.8", fay)
        imap_from(b, "127.0.0.9", fay).logout()
        wait_for("box b's log line of the proxied POP3 connection",
                 lambda: "pop3 connection ip=127.0.0.8 via=127.0.0.1" in access_log(b), timeout=60)
        assert pop.quit().startswith(b"+OK")
    finally:
        with contextlib.suppress(Exception):
            pop.close()
    # XCLIENT from a client not in the fleet does not exist.
    liar = pop3_from(b, "127.0.0.4")
    try:
        with pytest.raises(poplib.error_proto, match=r"-ERR Unknown command"):
            liar._shortcmd("XCLIENT ADDR=10.9.9.9 PORT=1")
    finally:
        liar.close()


def test_home_box_down_gives_unavailable(fleet: Fleet) -> None:
    a, b = fleet.a, fleet.b
    erin = add_user(b, "erin", "b")
    imap_login(a, erin).logout()  # works while b is up
    b.down()
    with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\]"):
        imap_login(a, erin)
    pop = poplib.POP3_SSL(a.host("pop3s"), a.port("pop3s"), context=a.client_tls(), timeout=60)
    try:
        pop.user(erin)
        with pytest.raises(poplib.error_proto, match=r"SYS/TEMP.*Home mail server"):
            pop.pass_(PASSWORD)
    finally:
        pop.close()
    # A wrong password is still "wrong password", judged on this box.
    m = imaplib.IMAP4_SSL(a.host("imaps"), a.port("imaps"), ssl_context=a.client_tls(), timeout=60)
    try:
        with pytest.raises(imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED"):
            m.login(erin, "not the password at all")
    finally:
        m.shutdown()
    # Mail for erin through box a waits in a's queue (b's relay is down), tried and deferred, not
    # delivered into a Maildir on a.
    send(a, erin, "while b is down")

    def deferred_in_queue() -> bool:
        rows = json.loads(a.cli("queue", "list", "--json").stdout)
        return any(r["attempts"] >= 1 and any(x["address"] == erin and x["state"] == "pending" for x in r["recipients"])
                   for r in rows)

    wait_for("erin's message deferred in box a's queue", deferred_in_queue, timeout=120, interval=0.5)
    assert not in_maildir(a, erin, "while b is down") and not a.maildir(erin).exists()


# --- config and CLI, no services -------------------------------------------------------------


def _data(tmp_path: Path) -> tuple[Box, dict]:  # type: ignore[type-arg]
    box = make_box(tmp_path, name="cfg")
    return box, tomllib.loads(box.config_file.read_text())


def _refused(box: Box, data: dict) -> str:  # type: ignore[type-arg]
    box.config_file.write_text(tomli_w.dumps(data))
    with pytest.raises(ConfigError) as exc:
        load(box.config_file)
    return str(exc.value)


def test_bad_fleet_config_is_refused_naming_the_key(tmp_path: Path) -> None:
    box, data = _data(tmp_path)
    cert = data["tls"]["cert"]
    shared = {"backend": "shared", "postgres_url": "postgresql://appliance@127.0.0.1:1/appliance",
              "redis_url": "redis://127.0.0.1:1/0"}
    good = {"box": "a", "ca_file": cert, "boxes": {"b": {"relay": "10.0.0.2:25", "access": "10.0.0.2:993"}}}
    assert "key fleet.box: required" in _refused(box, {**data, "state": shared, "fleet": {**good, "box": ""}})
    assert "key fleet.ca_file: required" in _refused(box, {**data, "state": shared, "fleet": {**good, "ca_file": ""}})
    assert "key fleet.ca_file: /nonexistent: no such file" in _refused(
        box, {**data, "state": shared, "fleet": {**good, "ca_file": "/nonexistent"}})
    assert "key fleet.boxes.b.access" in _refused(
        box, {**data, "state": shared, "fleet": {**good, "boxes": {"b": {"relay": "10.0.0.2:25", "access": "10.0.0.2"}}}})
    assert "key fleet.boxes.b.relay" in _refused(
        box, {**data, "state": shared, "fleet": {**good, "boxes": {"b": {"relay": "x:99999", "access": "h:993"}}}})
    assert "key fleet.boxes" in _refused(box, {**data, "state": shared, "fleet": {**good, "boxes": {"B x": {}}}})
    assert "key fleet.boxes: home boxes need state.backend = 'shared'" in _refused(box, {**data, "fleet": good})
    # And a good one loads.
    box.config_file.write_text(tomli_w.dumps({**data, "state": shared, "fleet": good}))
    cfg = load(box.config_file)
    assert cfg.fleet.boxes["b"].access_hop() == ("10.0.0.2", 993)
    assert cfg.fleet.home_of("a") == "" and cfg.fleet.home_of("b") == "b" and cfg.fleet.home_of("") == ""


def test_home_in_the_local_store_and_the_cli(tmp_path: Path) -> None:
    box, _ = _data(tmp_path)
    # No [fleet]: --home names no box of this fleet.
    r = box.cli("user", "add", f"x@{box.domain}", "--home", "b", "--password-stdin", input=PASSWORD + "\n",
                check=False)
    assert r.returncode == 1 and "--home b: not a box of this fleet" in r.stderr
    address = box.add_user("y", PASSWORD)
    assert "home: (this box)" in box.cli("user", "show", address).stdout
    assert '"home": ""' in box.cli("user", "list", "--json").stdout


def test_an_old_sqlite_accounts_file_gains_the_home_column(tmp_path: Path) -> None:
    from appliance.accounts import AccountStore

    path = tmp_path / "accounts.db"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE accounts (address TEXT PRIMARY KEY, password TEXT NOT NULL,"
                     " disabled INTEGER NOT NULL DEFAULT 0, limit_class TEXT NOT NULL DEFAULT 'default',"
                     " per_minute REAL, burst INTEGER, per_day INTEGER, held INTEGER NOT NULL DEFAULT 0,"
                     " held_reason TEXT NOT NULL DEFAULT '', held_since REAL, created REAL NOT NULL);"
                     "INSERT INTO accounts(address, password, created) VALUES ('old@example.test', 'x', 0);")
    db.close()
    store = AccountStore(path)
    try:
        old = store.get("old@example.test")
        assert old is not None and old.home == ""
        store.set_home("old@example.test", "mail2")
        assert store.get("old@example.test").home == "mail2"  # type: ignore[union-attr]
    finally:
        store.close()


def test_port_25_knows_the_fleet_boxes_by_address_and_certificate(tmp_path: Path) -> None:
    """A fleet box connects from its internal address (not in the registry) and proves itself with its
    certificate's pin before a local-domain sender is accepted from it; anyone else is refused."""
    import json
    from types import SimpleNamespace

    from appliance.policy.member_access import MemberAccess
    from appliance.policy.sender_identity import SenderIdentity
    from appliance.policy.session import Session
    from appliance.registry.model import parse as parse_registry

    box, data = _data(tmp_path)
    pin = "ab" * 32
    data["state"] = {"backend": "shared", "postgres_url": "postgresql://appliance@127.0.0.1:1/appliance",
                     "redis_url": "redis://127.0.0.1:1/0"}
    data["fleet"] = {"box": "a", "ca_file": data["tls"]["cert"],
                     "boxes": {"b": {"relay": "10.9.9.2:25", "access": "10.9.9.2:993", "spki_sha256": [pin]}}}
    box.config_file.write_text(tomli_w.dumps(data))
    ctx = SimpleNamespace(cfg=load(box.config_file))
    registry = parse_registry(json.loads(json.dumps({"members": [
        {"id": ctx.cfg.box.member_id, "status": "active", "domains": ["example.test"],
         "relays": [{"host": "mx.example.test", "addresses": ["192.0.2.1/32"]}]}]})))
    access, identity = MemberAccess(ctx), SenderIdentity(ctx)  # type: ignore[arg-type]

    def session(ip: str, spki: str | None) -> tuple[Session, object]:
        s = Session(listener="mx", client_ip=ip, registry=registry, tls=True, client_spki=spki)
        return s, access.on_connect(s)

    s, verdict = session("10.9.9.2", pin)
    assert verdict is None and s.member is not None and s.member.id == ctx.cfg.box.member_id
    assert identity.on_mail(s, "sender@example.test") is None  # the pin: a box of this fleet
    s, verdict = session("10.9.9.2", None)
    assert verdict is None and identity.on_mail(s, "sender@example.test") is not None  # no certificate
    s, verdict = session("10.9.9.2", "cd" * 32)
    assert identity.on_mail(s, "sender@example.test") is not None  # another certificate
    assert identity.on_mail(s, "someone@elsewhere.test") is None  # other domains as before
    _, verdict = session("10.9.9.3", pin)
    assert verdict is not None  # not a fleet address, not a member: refused at connect as before

