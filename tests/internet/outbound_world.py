"""The Internet for outbound TLS: a DNSSEC-signed zone, a validating unbound, MX hosts, an MTA-STS web server.

Topology (tests/helpers/netns.py, one private /24 that exists only in our namespaces):

- ``dns`` (.5): knotd, authoritative for ``test.``, signed by knot's automatic DNSSEC signing;
- ``box`` (.10): the relay of a development box with ``relay.outside = "mx"``, and unbound on the
  namespace's 127.0.0.1:53 validating ``test.`` against its DS (the test root's trust anchor,
  taken from ``keymgr``), as the box's own unbound (states/appliance/unbound.sls) would;
- ``dest`` (.20): a real Postfix with STARTTLS (a certificate of the test CA for the names in
  ``DEST_NAMES``), accepting mail for the test domains and logging every TLS session;
- ``sink`` (.30): ``smtp-sink``, which never offers STARTTLS (a stripped connection), dumping
  what it receives;
- ``web`` (.40): the MTA-STS policies over HTTPS (tests/internet/https_files.py, the test CA).

Which MX host has which policy is in ``zone_text``; the tests only send and look.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.accounts import AccountStore
from appliance.config import load
from tests.helpers import procs
from tests.helpers.box import APPLIANCE
from tests.helpers.knot import Knot, Zone
from tests.helpers.netns import Host, Net, listening
from tests.helpers.postfix import PrivatePostfix
from tests.helpers.wait import wait_for
from tests.internet.world import POSTFIX_BASE, REPO_ROOT

BASE_PORT = 10025
SUBMISSION = BASE_PORT + 1  # devbox LISTENER_ORDER: mx, submission, ...
PASSWORD = "correct horse battery"
# Names on the destination Postfix's certificate (mx2 and mx4 point at it too, but are not on it).
DEST_NAMES = ("mx1.test", "mx3.test", "mxta.test")
DOMAINS = ("dane-good.test", "dane-bad.test", "dane-ta.test", "dane-strip.test",
           "sts-good.test", "sts-bad.test", "sts-strip.test", "sts-testing.test", "plain.test", "member.test",
           "dane-bogus.test")
TLSRPT_RUA = "tlsrpt@example.test"  # a local account of the box: the reports come back to us


# --- a test CA ---------------------------------------------------------------------------------


@dataclass
class Pki:
    ca_pem: Path
    ca_der: bytes
    leaf_spki_sha256: str


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, names: tuple[str, ...], key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject))
         .issuer_name(issuer.subject if issuer else _name(subject))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                          crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
    else:
        b = (b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    return b.sign(issuer_key, hashes.SHA256())


def make_pki(d: Path, web_names: tuple[str, ...]) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Outbound Test CA", (), ca_key, None, ca_key, ca=True)
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca.public_bytes(pem))

    def leaf(stem: str, names: tuple[str, ...]) -> x509.Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(names[0], names, key, ca, ca_key, ca=False)
        (d / f"{stem}.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
        # The chain the server sends: leaf, then the CA (RFC 7671 5.2.2: DANE-TA needs the anchor sent).
        (d / f"{stem}.crt").write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
        os.chmod(d / f"{stem}.key", 0o644)  # Postfix reads it as root; the directory is ours only
        return cert

    dest = leaf("dest", DEST_NAMES)
    leaf("web", web_names)
    spki = dest.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return Pki(d / "ca.pem", ca.public_bytes(serialization.Encoding.DER), hashlib.sha256(spki).hexdigest())


# --- DNS -----------------------------------------------------------------------------------------


def _txt(value: str) -> str:
    return f'"{value}"'


def zone_text(prefix: str, pki: Pki) -> str:
    dest, sink, web = f"{prefix}.20", f"{prefix}.30", f"{prefix}.40"
    wrong = hashlib.sha256(b"not the certificate").hexdigest()
    rows = [
        "$ORIGIN test.", "$TTL 30",
        "@ SOA ns.test. hostmaster.test. 1 3600 600 86400 30", "@ NS ns.test.", f"ns A {prefix}.5",
        f"mx1 A {dest}", f"mx2 A {dest}", f"mx3 A {dest}", f"mx4 A {dest}", f"mxta A {dest}",
        f"sink A {sink}", f"plainmx A {sink}", f"mx5 A {dest}",
        # DANE: mx1 matches (DANE-EE, SPKI SHA-256), mxta through its CA (DANE-TA, full cert SHA-256),
        # mx2 matches nothing (same server, a wrong record), sink has TLSA but offers no STARTTLS.
        f"_25._tcp.mx1 TLSA 3 1 1 {pki.leaf_spki_sha256}",
        f"_25._tcp.mxta TLSA 2 0 1 {hashlib.sha256(pki.ca_der).hexdigest()}",
        f"_25._tcp.mx2 TLSA 3 1 1 {wrong}",
        f"_25._tcp.sink TLSA 3 1 1 {wrong}",
        "dane-good MX 10 mx1.test.", "dane-ta MX 10 mxta.test.", "dane-bad MX 10 mx2.test.",
        "dane-strip MX 10 sink.test.",
        # mx5's TLSA records live in a child zone whose DS matches no key: bogus, so unbound SERVFAILs
        # the TLSA lookup (the record itself would match: only the failed validation stops delivery).
        "dane-bogus MX 10 mx5.test.", f"{BOGUS_LABEL} NS ns.test.",
        f"{BOGUS_LABEL} DS 4711 13 2 {hashlib.sha256(b'no such key').hexdigest()}",
        # MTA-STS: mx3 is on the certificate, mx4 is not; plainmx offers no STARTTLS.
        "sts-good MX 10 mx3.test.", "sts-bad MX 10 mx4.test.", "sts-strip MX 10 plainmx.test.",
        "sts-testing MX 10 mx4.test.",
        # no policy at all: opportunistic, so plaintext to the sink is still allowed (the control case)
        "plain MX 10 plainmx.test.",
        # a consortium member's domain: its MX would be the plaintext sink, but the registry pins its relay
        "member MX 10 plainmx.test.",
        f"_smtp._tls.dane-bad TXT {_txt(f'v=TLSRPTv1; rua=mailto:{TLSRPT_RUA}')}",
        f"_smtp._tls.dane-good TXT {_txt(f'v=TLSRPTv1; rua=mailto:{TLSRPT_RUA}')}",
    ]
    for d in ("sts-good", "sts-bad", "sts-strip", "sts-testing"):
        rows += [f"_mta-sts.{d} TXT {_txt('v=STSv1; id=20261201')}", f"mta-sts.{d} A {web}"]
    return "\n".join(rows) + "\n"


BOGUS_LABEL = "_25._tcp.mx5"


def bogus_zone_text(pki: Pki) -> str:
    return "\n".join([f"$ORIGIN {BOGUS_LABEL}.test.", "$TTL 30", "@ SOA ns.test. hostmaster.test. 1 3600 600 86400 30",
                      "@ NS ns.test.", f"@ TLSA 3 1 1 {pki.leaf_spki_sha256}"]) + "\n"


def sts_policies() -> dict[str, str]:
    """mta-sts.DOMAIN -> the policy text served for it."""
    def policy(mode: str, mx: str) -> str:
        return f"version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n"
    return {"mta-sts.sts-good.test": policy("enforce", "mx3.test"),
            "mta-sts.sts-bad.test": policy("enforce", "mx4.test"),
            "mta-sts.sts-strip.test": policy("enforce", "plainmx.test"),
            "mta-sts.sts-testing.test": policy("testing", "mx4.test")}


UNBOUND_CONF = """\
server:
    interface: 127.0.0.1
    port: 53
    access-control: 127.0.0.0/8 allow
    username: ""
    chroot: ""
    directory: "{d}"
    pidfile: "{d}/unbound.pid"
    logfile: "{d}/unbound.log"
    use-syslog: no
    verbosity: 1
    val-log-level: 2
    do-not-query-localhost: no
    module-config: "validator iterator"
    trust-anchor: "{ds}"
    # unbound answers the special-use name test. (RFC 6761) itself unless told not to
    local-zone: "test." nodefault
    cache-max-ttl: 5
    cache-max-negative-ttl: 5
stub-zone:
    name: "test."
    stub-addr: {ns}@53
"""


@dataclass
class Proc:
    """A daemon in a namespace, with its log file."""

    host: Host
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: str, port: int, proto: str = "t") -> None:
        with open(self.log, "ab") as out:
            self.proc = self.host.popen(*self.argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        wait_for(ready, lambda: listening(self.host, port, proto) or self.proc.poll() is not None, 30)
        assert self.proc.poll() is None, f"{ready}: exited\n{self.text()[-3000:]}"

    def stop(self) -> None:
        procs.stop(self.proc)
        self.proc = None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class OutWorld:
    net: Net
    dir: Path
    hosts: dict[str, Host]
    pki: Pki
    config_file: Path
    postfix: PrivatePostfix
    sink_dump: Path
    knot: Knot
    procs: dict[str, Proc] = field(default_factory=dict)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.hosts["box"].run(*APPLIANCE, "-c", str(self.config_file), *args, cwd=REPO_ROOT, timeout=120)

    def submit(self, rcpt: str, marker: str) -> str:
        """alice submits a message for RCPT on the box's submission port (STARTTLS + AUTH); the transcript."""
        box = self.hosts["box"]
        data = (f"From: <alice@example.test>\r\nTo: <{rcpt}>\r\nSubject: outbound {marker}\r\n"
                f"Message-ID: <{marker}@example.test>\r\n\r\nmarker {marker}\r\n")
        r = box.run("swaks", "--server", f"{box.address}:{SUBMISSION}", "--tls", "--auth", "PLAIN",
                    "--auth-user", "alice@example.test", "--auth-password", PASSWORD, "--from", "alice@example.test",
                    "--to", rcpt, "--data", data, "--timeout", "30", timeout=60)
        return r.stdout + r.stderr

    def sink_got(self) -> bytes:
        """Everything smtp-sink received."""
        return b"".join(p.read_bytes() for p in sorted(self.sink_dump.iterdir()))

    def postfix_log(self) -> str:
        return self.postfix.log()

    def teardown(self) -> list[str]:
        for p in self.procs.values():
            p.stop()
        self.knot.stop()
        self.postfix.stop()
        stragglers = self.net.teardown()
        left = self.net.leftovers()
        shutil.rmtree(self.postfix.dir, ignore_errors=True)
        shutil.rmtree(self.sink_dump, ignore_errors=True)
        return left + [f"straggler pid {p}" for p in stragglers]


def _dest_postfix(host: Host, name: str, pki_dir: Path) -> PrivatePostfix:
    """The destination MTA (tests/helpers/postfix.py) on HOST's address: STARTTLS with the test CA's
    certificate, relays DOMAINS and discards them."""
    d = POSTFIX_BASE / name
    pf = PrivatePostfix.create(name, {
        "myhostname": "mx1.test",
        "relay_domains": " ".join(DOMAINS), "relay_transport": "discard:", "default_transport": "discard:",
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "smtpd_tls_chain_files": f"{d}/dest.key, {d}/dest.crt", "smtpd_tls_security_level": "may",
        "smtpd_tls_loglevel": "1", "smtpd_tls_received_header": "yes",
        "local_transport": "error:no local delivery", "maximal_queue_lifetime": "1h",
    }, host=host, address=host.address, base=POSTFIX_BASE)
    shutil.copy(pki_dir / "dest.key", d / "dest.key")
    shutil.copy(pki_dir / "dest.crt", d / "dest.crt")
    return pf


def build(base: Path) -> OutWorld:
    net = Net()
    world: OutWorld | None = None
    try:
        hosts = {n: net.add_host(n, o) for n, o in (("dns", 5), ("box", 10), ("dest", 20), ("sink", 30), ("web", 40))}
        net.check_routes()
        pki = make_pki(base / "pki", tuple(sts_policies()))
        knot = Knot(hosts["dns"], base / "knot", [Zone("test", "test.zone", signed=True),
                                                  Zone(f"{BOGUS_LABEL}.test", "bogus.zone", signed=True)])
        knot.write_zone("test.zone", zone_text(net.prefix, pki))
        knot.write_zone("bogus.zone", bogus_zone_text(pki))
        postfix = _dest_postfix(hosts["dest"], f"dest-{net.tag}", base / "pki")
        box_dir = base / "box"
        r = subprocess.run([*APPLIANCE, "init", "--dev", str(box_dir), "--domain", "example.test", "--host",
                            hosts["box"].address, "--base-port", str(BASE_PORT)],
                           capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
        assert r.returncode == 0, f"init --dev failed: {r.stdout}{r.stderr}"
        config_file = box_dir / "appliance.toml"
        data = tomllib.loads(config_file.read_text())
        data["relay"].update({"outside": "mx", "retry_initial": 3600, "retry_max": 3600})
        data["relay"]["outbound"] = {"resolver": {"nameservers": ["127.0.0.1"], "timeout": 3.0},
                                     "ca_file": str(pki.ca_pem)}
        config_file.write_text(tomli_w.dumps(data))
        cfg = load(config_file)
        # A second consortium member, member.test, whose relay is the destination Postfix, pinned by its key.
        reg_file = cfg.registry_dir / "registry.json"
        reg = json.loads(reg_file.read_text())
        reg["members"] = reg["members"][:1] + [{
            "id": "isp-b", "status": "active", "domains": ["member.test"],
            "relays": [{"host": hosts["dest"].address, "port": 25, "addresses": [f"{hosts['dest'].address}/32"],
                        "spki_sha256": [pki.leaf_spki_sha256]}]}]
        reg_file.write_text(json.dumps(reg, indent=2))
        store = AccountStore(cfg.paths.accounts_db)
        try:
            store.add("alice@example.test", PASSWORD)
            store.add(TLSRPT_RUA, PASSWORD)
        finally:
            store.close()
        # smtp-sink drops root for "nobody" and writes one file per message (dump file name + a suffix)
        # where that user can write: not under pytest's 0700 tmp.
        sink_dump = POSTFIX_BASE / f"sink-{net.tag}"
        sink_dump.mkdir(parents=True)
        os.chmod(sink_dump, 0o777)
        world = OutWorld(net, base, hosts, pki, config_file, postfix, sink_dump, knot)
        www = base / "www"
        for host, text in sts_policies().items():
            (www / host / ".well-known").mkdir(parents=True)
            (www / host / ".well-known" / "mta-sts.txt").write_text(text)

        knot.start()
        ds = wait_for("knot's DS for test.", lambda: knot.ds("test"), 30)
        ub_dir = base / "unbound"
        ub_dir.mkdir()
        (ub_dir / "unbound.conf").write_text(UNBOUND_CONF.format(d=ub_dir, ds=ds, ns=hosts["dns"].address))
        check = hosts["box"].run("unbound-checkconf", str(ub_dir / "unbound.conf"))
        assert check.returncode == 0, f"unbound config refused: {check.stdout}{check.stderr}"
        world.procs["unbound"] = Proc(hosts["box"], ["unbound", "-d", "-c", str(ub_dir / "unbound.conf")],
                                      ub_dir / "unbound.out")
        world.procs["unbound"].start("unbound on 127.0.0.1:53", 53, "u")
        world.procs["web"] = Proc(hosts["web"], [sys.executable, "-m", "tests.internet.https_files", str(www),
                                                 str(base / "pki" / "web.crt"), str(base / "pki" / "web.key"),
                                                 hosts["web"].address, "443"], base / "web.log")
        world.procs["web"].start("the MTA-STS web server", 443)
        world.procs["sink"] = Proc(hosts["sink"], ["smtp-sink", "-u", "nobody", "-D", str(world.sink_dump / "msg."), "-h", "sink.test",
                                                   f"{hosts['sink'].address}:25", "50"], base / "sink.log")
        world.procs["sink"].start("smtp-sink", 25)
        world.postfix.start()
        world.procs["relay"] = Proc(hosts["box"], [sys.executable, "-m", "services.relay", "-c", str(config_file)],
                                    base / "relay.log")
        world.procs["relay"].start("the relay", SUBMISSION)
        return world
    except BaseException:
        if world is not None:
            world.teardown()
        else:
            net.teardown()
        raise
