"""The Internet in network namespaces: authoritative DNS (knot), the box, a Postfix and swaks outsiders.

Topology, on one private /24 that exists only inside our namespaces (tests/helpers/netns.py):

- ``dns`` (.5): knotd, authoritative for the zone ``test.``: SPF, DKIM keys, DMARC policies
  and a DNS block list of the test domains (``zone_text``); the relay asks it directly
  (``relay.resolver.nameservers``). Stopping it (SIGSTOP) is a real DNS outage: queries time out.
- ``box`` (.10): the relay of a development box with ``relay.outsiders = "verify"``; the box is
  also the dev registry's only member, so mail from its own address is member mail.
- ``mta`` (.50): a real Postfix, relaying everything to the box (relayhost), the outsider MTA.
- ``client`` (.60): swaks, an outsider that speaks SMTP to the box itself.
- ``listed`` (.70): a client listed in the test block list ``dnsbl.test``.

Every client runs inside its namespace; ``Net.check_routes`` proves, with ``ip route get``,
that the test addresses are reached over the test link and nothing else is routable.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import dkim
import tomli_w

from appliance.accounts import AccountStore
from appliance.config import Config, load
from appliance.tlsfiles import make_dkim_key
from tests.helpers import procs
from tests.helpers.box import APPLIANCE
from tests.helpers.knot import Knot, Zone
from tests.helpers.netns import Host, Net, listening
from tests.helpers.postfix import PrivatePostfix
from tests.helpers.wait import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
MX_PORT = 10025  # `init --dev --base-port 10025`: the box's namespace is fresh, every port is free
PASSWORD = "correct horse battery"
DNS_TIMEOUT = 2.0  # relay.resolver.timeout in the tests: an outage is answered within a few of these
POSTFIX_BASE = Path("/var/tmp/appliance-internet")  # Postfix's daemons run as other users: not under pytest's 0700 tmp
# Domains the tests sign for (selector s1) and the forwarders that seal ARC sets (selector arc).
SIGNERS = ("good.test", "orig.test", "late.test")
SEALERS = ("list.test", "evil.test")


def _txt(value: str) -> str:
    """A TXT RDATA: character-strings of at most 255 octets (RFC 1035 3.3.14), quoted."""
    return " ".join(f'"{value[i:i + 200]}"' for i in range(0, len(value), 200))


def zone_text(prefix: str, keys: dict[str, str]) -> str:
    """The zone ``test.``; KEYS: domain -> DKIM TXT value."""
    mta, client, listed = f"{prefix}.50", f"{prefix}.60", f"{prefix}.70"
    rows = [
        "$ORIGIN test.",
        "$TTL 30",
        "@ SOA ns.test. hostmaster.test. 1 3600 600 86400 30",
        "@ NS ns.test.",
        f"ns A {prefix}.5",
        # good.test: everything in order; DMARC p=reject
        f"good TXT {_txt(f'v=spf1 ip4:{mta} ip4:{client} -all')}",
        f"_dmarc.good TXT {_txt('v=DMARC1; p=reject')}",
        # bank.test: a domain that is forged; its mail comes from 192.0.2.1 only
        f"bank TXT {_txt('v=spf1 ip4:192.0.2.1 -all')}",
        f"_dmarc.bank TXT {_txt('v=DMARC1; p=reject; adkim=s; aspf=s')}",
        # hyphenated domains (a parser that stops at "-" would look up the wrong policy)
        f"my-bank TXT {_txt('v=spf1 ip4:192.0.2.1 -all')}",
        f"_dmarc.my-bank TXT {_txt('v=DMARC1; p=reject')}",
        f"good-mail TXT {_txt(f'v=spf1 ip4:{client} -all')}",
        f"_dmarc.good-mail TXT {_txt('v=DMARC1; p=reject')}",
        # shop.test: p=quarantine, no host may send for it
        f"shop TXT {_txt('v=spf1 -all')}",
        f"_dmarc.shop TXT {_txt('v=DMARC1; p=quarantine')}",
        # fail.test / soft.test: SPF only, no DMARC record
        f"fail TXT {_txt('v=spf1 -all')}",
        f"soft TXT {_txt('v=spf1 ~all')}",
        # orig.test: an author's domain with p=reject whose mail goes through mailing lists
        f"orig TXT {_txt('v=spf1 ip4:192.0.2.1 -all')}",
        f"_dmarc.orig TXT {_txt('v=DMARC1; p=reject')}",
        # list.test (trusted by the box) and evil.test (not): forwarders sending from the client
        f"list TXT {_txt(f'v=spf1 ip4:{client} -all')}",
        f"evil TXT {_txt(f'v=spf1 ip4:{client} -all')}",
        # late.test: used while the DNS server is stopped (nothing about it is cached)
        f"late TXT {_txt(f'v=spf1 ip4:{mta} ip4:{client} -all')}",
        f"_dmarc.late TXT {_txt('v=DMARC1; p=reject')}",
        # the block list: the "listed" host (RFC 5782 2.1: A 127.0.0.2 under the reversed address)
        "{}.dnsbl A 127.0.0.2".format(".".join(reversed(listed.split(".")))),
    ]
    for domain, txt in keys.items():
        label = domain.removesuffix(".test")
        selector = "arc" if domain in SEALERS else "s1"
        rows.append(f"{selector}._domainkey.{label} TXT {_txt(txt)}")
    return "\n".join(rows) + "\n"


class NsPostfix(PrivatePostfix):
    """The outsider MTA (tests/helpers/postfix.py, in the ``mta`` namespace): relays everything to the box."""

    @classmethod
    def relaying(cls, host: Host, relayhost: str, name: str) -> NsPostfix:
        pf = cls.create(name, {
            "myhostname": "mail.good.test",
            "myorigin": "good.test",
            "relayhost": relayhost,
            "local_transport": "error:no local delivery",
            "bounce_queue_lifetime": "0",
            "maximal_queue_lifetime": "1h",
        }, host=host, base=POSTFIX_BASE)
        assert isinstance(pf, NsPostfix)
        return pf

    def send(self, sender: str, rcpt: str, message: bytes) -> None:
        """Submit MESSAGE to this Postfix (its smtpd on the namespace's loopback) as a mail client would."""
        data = self.dir / f"msg-{time.monotonic_ns()}.eml"
        data.write_bytes(message)
        r = self.run("swaks", "--server", "127.0.0.1:25", "--helo", "client.good.test", "--from", sender,
                     "--to", rcpt, "--data", f"@{data}", "--timeout", "30", timeout=60)
        assert "250 2.0.0 Ok: queued" in r.stdout, f"postfix did not take the message:\n{r.stdout}{r.stderr}"

    def wait_log(self, marker: str, status: str, timeout: float = 60) -> str:
        """The maillog line of the message with Message-ID MARKER ending in STATUS (sent, bounced, deferred)."""
        def find() -> str | None:
            log = self.log()
            # "... postfix/cleanup[PID]: QUEUEID: message-id=<MARKER@...>"
            qids = {line.split(": ")[1] for line in log.splitlines() if marker in line and "message-id=" in line}
            for line in log.splitlines():
                if f"status={status}" in line and any(f" {q}: " in line for q in qids):
                    return line
            return None
        return wait_for(f"postfix: {status} for {marker}", find, timeout)


@dataclass
class World:
    net: Net
    dir: Path
    hosts: dict[str, Host]
    knot: Knot
    postfix: NsPostfix
    config_file: Path
    keys: dict[str, Path] = field(default_factory=dict)
    relay: subprocess.Popen[bytes] | None = None

    @functools.cached_property
    def cfg(self) -> Config:
        return load(self.config_file)  # written once by build(); loaded once

    @property
    def box_ip(self) -> str:
        return self.hosts["box"].address

    # --- the box --------------------------------------------------------------------------

    def start_relay(self) -> None:
        with open(self.dir / "relay.log", "ab") as out:
            self.relay = self.hosts["box"].popen(sys.executable, "-m", "services.relay", "-c", str(self.config_file),
                                                 stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        wait_for("the relay listening", lambda: listening(self.hosts["box"], MX_PORT) or self.relay.poll() is not None,
                 60)
        assert self.relay.poll() is None, f"relay exited:\n{self.relay_log()[-3000:]}"

    def stop_relay(self) -> None:
        procs.stop(self.relay)
        self.relay = None

    def relay_log(self) -> str:
        p = self.dir / "relay.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        # In the box's namespace: `status` reads the relay's metrics on the namespace's loopback.
        return self.hosts["box"].run(*APPLIANCE, "-c", str(self.config_file), *args, cwd=REPO_ROOT, timeout=60)

    def maildir(self, address: str, folder: str = "") -> Path:
        local, domain = address.split("@")
        root = Path(self.cfg.paths.mail_dir) / domain / local
        return (root / f".{folder}" if folder else root) / "new"

    def find_delivered(self, address: str, marker: bytes, folder: str = "", timeout: float = 30) -> bytes:
        def find() -> bytes | None:
            d = self.maildir(address, folder)
            for p in sorted(d.iterdir()) if d.exists() else []:
                data = p.read_bytes()
                if marker in data:
                    return data
            return None
        return wait_for(f"{marker!r} delivered to {address} {folder or 'INBOX'}", find, timeout)

    def delivered_anywhere(self, address: str, marker: bytes) -> list[Path]:
        local, domain = address.split("@")
        root = Path(self.cfg.paths.mail_dir) / domain / local
        return [p for p in root.rglob("*") if p.is_file() and p.parent.name in ("new", "cur")
                and marker in p.read_bytes()]

    # --- outsiders ------------------------------------------------------------------------

    def swaks(self, host: str, sender: str, rcpt: str, message: bytes, helo: str = "client.test",
              quit_after: str | None = None) -> str:
        """Send MESSAGE with swaks from HOST's namespace to the box's port 25; the transcript."""
        h = self.hosts[host]
        data = self.dir / f"swaks-{time.monotonic_ns()}.eml"
        data.write_bytes(message)
        argv = ["swaks", "--server", f"{self.box_ip}:{MX_PORT}", "--helo", helo, "--from", sender, "--to", rcpt,
                "--data", f"@{data}", "--timeout", "60"]
        if quit_after:
            argv += ["--quit-after", quit_after]
        r = h.run(*argv, timeout=120)
        return r.stdout + r.stderr

    def sign(self, domain: str, message: bytes) -> bytes:
        """MESSAGE with a DKIM-Signature of DOMAIN (selector s1), as its author's provider adds."""
        sig = dkim.sign(message, b"s1", domain.encode(), self.keys[domain].read_bytes(),
                        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
        return sig.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n") + message

    def arc_seal(self, sealer: str, message: bytes, results: str) -> bytes:
        """MESSAGE forwarded by SEALER: its Authentication-Results (RESULTS), then its ARC set (RFC 8617)."""
        with_ar = f"Authentication-Results: {sealer}; {results}\r\n".encode() + message
        headers = dkim.arc_sign(with_ar, b"arc", sealer.encode(), self.keys[sealer].read_bytes(), sealer.encode())
        return b"".join(h.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for h in headers) + with_ar

    # --- teardown -------------------------------------------------------------------------

    def teardown(self) -> list[str]:
        self.stop_relay()
        self.postfix.stop()
        self.knot.stop()
        stragglers = self.net.teardown()
        left = self.net.leftovers()
        shutil.rmtree(self.postfix.dir, ignore_errors=True)
        return left + [f"straggler pid {p}" for p in stragglers]


def build(base: Path) -> World:
    net = Net()
    world: World | None = None
    try:
        hosts = {name: net.add_host(name, octet)
                 for name, octet in (("dns", 5), ("box", 10), ("mta", 50), ("client", 60), ("listed", 70))}
        net.check_routes()
        keys: dict[str, Path] = {}
        txts: dict[str, str] = {}
        (base / "keys").mkdir(parents=True, exist_ok=True)
        for domain in SIGNERS + SEALERS:
            keys[domain] = base / "keys" / f"{domain}.key"
            txts[domain] = make_dkim_key(keys[domain], bits=1024)
        knot = Knot(hosts["dns"], base / "knot", [Zone("test", "test.zone")])
        knot.write_zone("test.zone", zone_text(net.prefix, txts))
        box_dir = base / "box"
        r = subprocess.run([*APPLIANCE, "init", "--dev", str(box_dir), "--domain", "example.test", "--host",
                            hosts["box"].address, "--base-port", str(MX_PORT), "--internet"],
                           capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
        assert r.returncode == 0, f"init --dev --internet failed: {r.stdout}{r.stderr}"
        config_file = box_dir / "appliance.toml"
        data = tomllib.loads(config_file.read_text())
        data["relay"]["resolver"] = {"nameservers": [hosts["dns"].address], "port": 53, "timeout": DNS_TIMEOUT}
        data["relay"]["verify"] = {"dnsbl_zones": ["dnsbl.test"], "arc_trusted_sealers": ["list.test"]}
        config_file.write_text(tomli_w.dumps(data))
        store = AccountStore(load(config_file).paths.accounts_db)
        try:
            store.add("alice@example.test", PASSWORD)
        finally:
            store.close()
        postfix = NsPostfix.relaying(hosts["mta"], f"[{hosts['box'].address}]:{MX_PORT}", f"mta-{net.tag}")
        world = World(net, base, hosts, knot, postfix, config_file, keys)
        knot.start()
        postfix.start()
        world.start_relay()
        return world
    except BaseException:
        if world is not None:
            world.teardown()
        else:
            net.teardown()
        raise
