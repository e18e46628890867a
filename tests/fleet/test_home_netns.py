"""Home boxes in network namespaces (issue 16 items 5 and 7): "an IMAP login on the non-home box
reads the mail stored on the home box", over a real internal network.

A `state` namespace runs PostgreSQL (the shared accounts) and redis-server (the shared limiter);
`box1` and `box2` run a relay and an access service each; a `client` namespace runs the mail
client (Python smtplib and imaplib, started inside it). Each box's registry lists only its own
address, so box1 reaching box2's port 25 relies on `[fleet]` (its address and certificate pin),
not on the registry. Nothing here asserts timing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomli_w

from appliance.config import load
from appliance.tlsfiles import load_cert, spki_sha256
from tests.fleet.redis_server import RedisServer
from tests.fleet.test_redis_fleet import NamespacePg, _listening
from tests.helpers.box import APPLIANCE, pids_under, run_cli
from tests.helpers.netns import Host, Net
from tests.helpers.wait import wait_for

pytestmark = [pytest.mark.peers, pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"
BASE_PORT = 10025  # inside each box's own namespace: nothing else listens there


@dataclass
class Box:
    name: str
    host: Host
    dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.dir / "appliance.toml"

    def port(self, listener: str) -> int:
        return int(getattr(load(self.config).listeners, listener).port)

    def start(self) -> None:
        for service, listener in (("relay", "submission"), ("access", "imaps")):
            log = open(self.dir / f"{service}-test.log", "ab")
            self.procs.append(self.host.popen(sys.executable, "-m", f"services.{service}", "-c", str(self.config),
                                              stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO)))
            log.close()
            port = self.port(listener)
            wait_for(f"{self.name}'s {service} listening on {port}",
                     lambda port=port: _listening(self.host, port) or self._died(), timeout=90, interval=0.2)

    def _died(self) -> bool:
        dead = [p for p in self.procs if p.poll() is not None]
        assert not dead, f"{self.name}: a service exited: {self.logs()[-3000:]}"
        return False

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.procs = []

    def cli(self, *args: str, input: str | None = None) -> str:
        proc = self.host.run(*APPLIANCE, "-c", str(self.config), *args, input=input, cwd=str(REPO))
        assert proc.returncode == 0, f"{self.name}: appliance {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc.stdout

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("*-test.log")))

    def delivered(self, address: str, subject: str) -> int:
        local, domain = address.split("@")
        new = Path(load(self.config).paths.mail_dir) / domain / local / "new"
        return sum(1 for p in new.iterdir() if f"Subject: {subject}".encode() in p.read_bytes()) if new.exists() else 0


@dataclass
class World:
    net: Net
    boxes: dict[str, Box]
    client: Host
    ca: Path

    def client_python(self, script: str) -> str:
        """SCRIPT run by Python inside the client namespace; its stdout (it must exit 0)."""
        proc = self.client.run(sys.executable, "-c", textwrap.dedent(script), cwd=str(REPO), timeout=180)
        assert proc.returncode == 0, f"client script failed: {proc.stdout}{proc.stderr}"
        return proc.stdout


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("homenet")
    net = Net()
    boxes: dict[str, Box] = {}
    redis: RedisServer | None = None
    pg: NamespacePg | None = None
    try:
        state = net.add_host("state", 1)
        hosts = {"box1": net.add_host("box1", 2), "box2": net.add_host("box2", 3)}
        client = net.add_host("client", 9)
        net.check_routes()
        redis = RedisServer(base / "redis", bind=state.address, port=6379, prefix=state.cmd())
        redis.start()
        pg = NamespacePg(state)
        pg.init()
        for name, h in hosts.items():
            run_cli(None, "init", "--dev", str(base / name), "--domain", "example.test", "--host", h.address,
                    "--base-port", str(BASE_PORT), "--hostname", f"{name}.example.test")
            boxes[name] = Box(name, h, base / name)
        ca = base / "fleet-ca.pem"  # each dev box's self-signed certificate is its own CA here
        ca.write_text("".join(Path(load(b.config).tls.cert).read_text() for b in boxes.values()))
        for name, b in boxes.items():
            data = tomllib.loads(b.config.read_text())
            data["state"] = {"backend": "shared", "redis_url": f"redis://{state.address}:6379/0",
                             "postgres_url": pg.url(), "postgres_password_file": str(pg.password_file)}
            data["fleet"] = {"box": name, "ca_file": str(ca), "boxes": {
                n: {"relay": f"{o.host.address}:{o.port('mx')}", "access": f"{o.host.address}:{o.port('imaps')}",
                    "spki_sha256": [spki_sha256(load_cert(load(o.config).tls.cert))]}
                for n, o in boxes.items()}}
            b.config.write_text(tomli_w.dumps(data))
        boxes["box1"].cli("db", "migrate")
        boxes["box1"].cli("user", "add", "sender@example.test", "--home", "box1", "--password-stdin",
                          input=PASSWORD + "\n")
        boxes["box2"].cli("user", "add", "alice@example.test", "--home", "box2", "--password-stdin",
                          input=PASSWORD + "\n")
        for b in boxes.values():
            b.start()
        yield World(net, boxes, client, ca)
    finally:
        for b in boxes.values():
            b.stop()
        if redis is not None:
            redis.stop()
        if pg is not None:
            pg.close()
        stragglers = net.teardown()
        left = net.leftovers()
    assert not stragglers, f"processes left in the namespaces: {stragglers}"
    assert not left, f"namespaces or links left: {left}"
    assert not pids_under(base), "processes left behind"


def test_mail_via_the_other_box_lands_at_home_and_imap_on_the_other_box_reads_it(world: World) -> None:
    box1, box2 = world.boxes["box1"], world.boxes["box2"]
    # The client submits on box1 (not alice's home) as a customer at home there.
    world.client_python(f"""
        import smtplib, ssl
        from email.message import EmailMessage
        ctx = ssl.create_default_context(cafile={str(world.ca)!r})
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "sender@example.test", "alice@example.test", "across the fleet"
        msg.set_content("stored on box2\\n")
        with smtplib.SMTP({box1.host.address!r}, {box1.port('submission')}, timeout=60) as s:
            s.starttls(context=ctx)
            s.login("sender@example.test", {PASSWORD!r})
            s.send_message(msg)
    """)
    wait_for("the message in alice's Maildir on box2", lambda: box2.delivered("alice@example.test", "across the fleet"),
             timeout=120, interval=0.3)
    assert box1.delivered("alice@example.test", "across the fleet") == 0
    # IMAP on box1, which proxies alice to box2 over the internal network.
    out = world.client_python(f"""
        import imaplib, ssl
        ctx = ssl.create_default_context(cafile={str(world.ca)!r})
        m = imaplib.IMAP4_SSL({box1.host.address!r}, {box1.port('imaps')}, ssl_context=ctx, timeout=60)
        m.login("alice@example.test", {PASSWORD!r})
        typ, data = m.select("INBOX")
        print("EXISTS", data[0].decode())
        typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        print("SUBJECT", data[0][1].decode().strip())
        m.logout()
    """)
    assert "EXISTS 1" in out and "SUBJECT Subject: across the fleet" in out, out
    assert "imap proxy" not in box1.logs()  # no proxy failure logged


def test_an_account_added_or_disabled_on_one_box_counts_on_the_other_at_once(world: World) -> None:
    """Issue 16 item 7: "a user added or held on one box is refused or accepted on the other at once"
    (both boxes read the one PostgreSQL in the state namespace; nothing is copied between them)."""
    box1, box2 = world.boxes["box1"], world.boxes["box2"]
    box2.cli("user", "add", "carol@example.test", "--home", "box1", "--password-stdin", input=PASSWORD + "\n")
    login = f"""
        import smtplib, ssl
        ctx = ssl.create_default_context(cafile={str(world.ca)!r})
        with smtplib.SMTP({box1.host.address!r}, {box1.port('submission')}, timeout=60) as s:
            s.starttls(context=ctx)
            try:
                s.login("carol@example.test", {PASSWORD!r})
                print("AUTH OK")
            except smtplib.SMTPAuthenticationError as exc:
                print("AUTH REFUSED", exc.smtp_code)
    """
    assert "AUTH OK" in world.client_python(login)  # added through box2, accepted by box1 at once
    box2.cli("user", "disable", "carol@example.test")
    out = world.client_python(login)
    assert "AUTH REFUSED 535" in out, out  # disabled through box2, refused by box1 at once
    box1.cli("user", "enable", "carol@example.test")
    assert "AUTH OK" in world.client_python(login)


def test_home_box_access_down_gives_unavailable_in_the_namespaces(world: World) -> None:
    box1, box2 = world.boxes["box1"], world.boxes["box2"]
    access = box2.procs[1]
    access.terminate()
    access.wait(timeout=30)
    out = world.client_python(f"""
        import imaplib, ssl
        ctx = ssl.create_default_context(cafile={str(world.ca)!r})
        m = imaplib.IMAP4_SSL({box1.host.address!r}, {box1.port('imaps')}, ssl_context=ctx, timeout=60)
        try:
            m.login("alice@example.test", {PASSWORD!r})
            print("LOGGED IN")
        except imaplib.IMAP4.error as exc:
            print("REFUSED", exc)
        m.shutdown()
    """)
    assert "REFUSED" in out and "[UNAVAILABLE]" in out, out
    assert "imap proxy of alice@example.test to home box box2" in box1.logs()
