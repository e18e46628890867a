"""`appliance doctor` against a real authoritative DNS (knot) in a network namespace.

Topology (tests/helpers/netns.py): ``dns`` (.5) runs knotd for ``example.test`` and the test /24's
reverse zone; ``box`` (.10) runs the box's relay, its console (which serves the MTA-STS policy) and,
on its own loopback, the dev registry's HTTP server (`appliance registry serve`). Doctor runs in the box's namespace and asks knot directly
(relay.resolver.nameservers). The zones are written from `appliance dns`'s own zone-file output,
then broken the ways an operator breaks them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w

from appliance.tlsfiles import make_dkim_key
from tests.helpers import procs
from tests.helpers.box import APPLIANCE
from tests.helpers.knot import Knot, Zone
from tests.helpers.netns import Host, Net, listening
from tests.helpers.wait import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_PORT = 10025
DNS_TIMEOUT = 1.0
RUNNING = ("mx", "submission", "submissions", "metrics", "console")  # relay and console; the rest disabled


class ZoneKnot(Knot):
    """knotd with the two zones of this test: example.test (signed or not) and the test /24's reverse zone."""

    def load(self, forward: list[str], reverse: list[str], signed: bool = True) -> None:
        """Serve these record lines (restarting knotd: the new data is what the next query sees); SIGNED:
        knot signs example.test itself (automatic DNSSEC signing, default policy)."""
        self.zones[0].signed = signed
        serial = time.time_ns() // 10**9 % 2**31
        soa = [f"$TTL 1\n@ SOA ns.example.test. hostmaster.example.test. {serial} 3600 600 86400 1", "@ NS ns.example.test."]
        self.write_zone("forward.zone", "\n".join(["$ORIGIN example.test.", *soa, f"ns A {self.host.address}", *forward]) + "\n")
        self.write_zone("reverse.zone", "\n".join([f"$ORIGIN {self.reverse}.", *soa, *reverse]) + "\n")
        self.reload()

    @property
    def reverse(self) -> str:
        return self.zones[1].domain


@dataclass
class Lab:
    net: Net
    box: Host
    knot: ZoneKnot
    dir: Path
    config: Path  # what the relay runs with
    doctor_config: Path  # the same, with registry.url at the HTTP registry server
    records: list[tuple[str, str]]  # (comment, record line) as `appliance dns` printed them
    relay: subprocess.Popen[bytes]
    console: subprocess.Popen[bytes]
    registry: subprocess.Popen[str]

    def doctor(self, config: Path | None = None) -> tuple[int, list[dict[str, str]]]:
        r = self.box.run(*APPLIANCE, "-c", str(config or self.doctor_config), "doctor", "--json", cwd=REPO_ROOT,
                         timeout=120)
        assert r.returncode in (0, 1), f"doctor crashed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        return r.returncode, json.loads(r.stdout)

    def serve(self, replace: dict[str, str | None] | None = None, signed: bool = True) -> None:
        """Publish `appliance dns`'s records, with REPLACE: record-line prefix -> new line (None: left out)."""
        forward, reverse = [], []
        for _, line in self.records:
            for prefix, new in (replace or {}).items():
                if line.startswith(prefix):
                    line = new  # type: ignore[assignment]
                    break
            if line is None:
                continue
            (reverse if ".in-addr.arpa." in line.split()[0] else forward).append(line)
        self.knot.load(forward, reverse, signed)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("the doctor DNS tests need root (network namespaces): run `make test` as root")
    for tool in ("ip", "ss", "knotd", "knotc"):
        if shutil.which(tool) is None:
            pytest.fail(f"missing test peer {tool}: run `make deps-debian` (scripts/peercheck.py)")
    base = tmp_path_factory.mktemp("doctor")
    net = Net()
    relay = console = registry = None
    knot: ZoneKnot | None = None
    try:
        dns_host, box = net.add_host("dns", 5), net.add_host("box", 10)
        net.check_routes()
        box_dir = base / "box"
        r = subprocess.run([*APPLIANCE, "init", "--dev", str(box_dir), "--domain", "example.test", "--host",
                            box.address, "--base-port", str(BASE_PORT)],
                           capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        config = box_dir / "appliance.toml"
        data = tomllib.loads(config.read_text())
        data["relay"]["resolver"] = {"nameservers": [dns_host.address], "port": 53, "timeout": DNS_TIMEOUT}
        data["publish"] = {"addresses": [box.address]}
        for name in data["listeners"]:
            if name not in RUNNING:
                data["listeners"][name]["enabled"] = False
        config.write_text(tomli_w.dumps(data))

        with open(base / "relay.log", "ab") as out:
            relay = box.popen(sys.executable, "-m", "services.relay", "-c", str(config), stdout=out,
                              stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        wait_for("the relay listening", lambda: listening(box, BASE_PORT) or relay.poll() is not None, 60)
        assert relay.poll() is None, (base / "relay.log").read_text()[-3000:]
        console_port = data["listeners"]["console"]["port"]
        with open(base / "console.log", "ab") as out:
            console = box.popen(sys.executable, "-m", "services.console", "-c", str(config), stdout=out,
                                stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        wait_for("the console listening", lambda: listening(box, console_port) or console.poll() is not None, 60)
        assert console.poll() is None, (base / "console.log").read_text()[-3000:]
        # The dev registry over HTTP on the box's loopback: doctor compares the clock with its Date header.
        registry = box.popen(*APPLIANCE, "-c", str(config), "registry", "serve", str(box_dir / "registry-repo"),
                             "--port", "0", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT)
        assert registry.stdout is not None
        url = re.search(r"at (http://\S+)", registry.stdout.readline())
        assert url, "appliance registry serve did not say where it listens"
        data["registry"]["url"] = url.group(1)
        doctor_config = box_dir / "doctor.toml"
        doctor_config.write_text(tomli_w.dumps(data))

        printed = subprocess.run([*APPLIANCE, "-c", str(config), "dns"], capture_output=True, text=True,
                                 cwd=REPO_ROOT, timeout=60)
        assert printed.returncode == 0, printed.stderr
        lines = [line for line in printed.stdout.splitlines() if line]
        records = [(lines[i - 1], line) for i, line in enumerate(lines) if not line.startswith(";")]
        octets = box.address.split(".")
        knot = ZoneKnot(dns_host, base / "knot", [Zone("example.test", "forward.zone"),
                                                  Zone(".".join(reversed(octets[:3])) + ".in-addr.arpa", "reverse.zone")])
        lab = Lab(net, box, knot, base, config, doctor_config, records, relay, console, registry)
        lab.serve()
        yield lab
    finally:
        procs.stop(registry)
        procs.stop(console)
        procs.stop(relay)
        if knot is not None:
            knot.stop()
        stragglers = net.teardown()
        left = net.leftovers()
        assert not left and not stragglers, f"teardown left things behind: {left} {stragglers}"


def findings_of(findings: list[dict[str, str]], prefix: str) -> list[dict[str, str]]:
    return [f for f in findings if f["check"].startswith(prefix)]


def test_correct_zone_is_all_ok(lab: Lab) -> None:
    lab.serve()
    status, findings = lab.doctor()
    bad = [f for f in findings_of(findings, "dns") if f["level"] != "ok"]
    assert not bad, bad
    # One finding per published record (the PTR's included), and each has its level and summary.
    assert len(findings_of(findings, "dns ")) == len(lab.records)
    assert {f["check"] for f in findings_of(findings, "dns PTR")} == {f"dns PTR {lab.box.address}"}
    listeners = {f["check"].split()[1]: f["level"] for f in findings_of(findings, "listener")}
    assert listeners == dict.fromkeys(RUNNING, "ok")
    levels = {f["check"]: f["level"] for f in findings}
    assert levels["clock"] == "ok" and levels["registry"] == "ok" and levels["certificate expiry"] == "ok"
    assert levels["certificate chain"] == "warning"  # the dev box's certificate is self-signed
    # The console serves the box's own MTA-STS policy, fetched as a sender would (Host: mta-sts.DOMAIN) ...
    assert levels["mta-sts policy example.test"] == "ok"
    # ... but on loopback, where no sender reaches it: said, as a warning.
    assert levels["mta-sts reachable"] == "warning"
    assert status == 0


def test_wrong_dkim_key_missing_mta_sts_and_wrong_tlsa_and_ptr(lab: Lab) -> None:
    other = make_dkim_key(lab.dir / "other.key", bits=1024)
    chunks = " ".join(f'"{other[i:i + 200]}"' for i in range(0, len(other), 200))
    ptr = f"{lab.box.address.split('.')[-1]}.{lab.knot.reverse}."
    lab.serve({
        "mail._domainkey.example.test.": f"mail._domainkey.example.test. 1 IN TXT {chunks}",
        "_mta-sts.example.test.": None,
        f"_{BASE_PORT}._tcp.mx.example.test.": f"_{BASE_PORT}._tcp.mx.example.test. 1 IN TLSA 3 1 1 {'ab' * 32}",
        ptr: f"{ptr} 1 IN PTR mail.elsewhere.test.",
    })
    status, findings = lab.doctor()
    by_check = {f["check"]: f for f in findings}
    dkim = by_check["dns DKIM mail._domainkey.example.test"]
    assert dkim["level"] == "error" and "not the box's key" in dkim["summary"]
    assert other.split("p=")[1] not in dkim["fix"] and "p=MII" in dkim["fix"]  # says what to publish instead
    sts = by_check["dns MTA-STS _mta-sts.example.test"]
    assert sts["level"] == "warning" and sts["summary"] == "no MTA-STS record" and "v=STSv1; id=" in sts["fix"]
    tlsa = by_check[f"dns TLSA _{BASE_PORT}._tcp.mx.example.test"]
    assert tlsa["level"] == "error" and "DANE" in tlsa["summary"]
    ptr_f = by_check[f"dns PTR {lab.box.address}"]
    assert ptr_f["level"] == "error" and "mail.elsewhere.test" in ptr_f["summary"] and "mx.example.test" in ptr_f["fix"]
    # Everything else is still fine, and the errors fail the run.
    broken = {dkim["check"], sts["check"], tlsa["check"], ptr_f["check"]}
    assert all(f["level"] == "ok" for f in findings_of(findings, "dns ") if f["check"] not in broken)
    assert status == 1


def test_text_output_says_what_to_do(lab: Lab) -> None:
    lab.serve({"_dmarc.example.test.": None})
    r = lab.box.run(*APPLIANCE, "-c", str(lab.doctor_config), "doctor", cwd=REPO_ROOT, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("WARNING dns DMARC _dmarc.example.test"))
    assert lines[i + 1].strip().startswith('-> publish: _dmarc.example.test TXT "v=DMARC1; p=quarantine;')
    assert re.fullmatch(r"\d+ ok, \d+ warnings, 0 errors", lines[-1])


def test_a_listener_that_does_not_answer_is_an_error(lab: Lab) -> None:
    data = tomllib.loads(lab.doctor_config.read_text())
    data["listeners"]["imaps"]["enabled"] = True  # configured, but nothing runs the access service here
    variant = lab.dir / "imaps.toml"
    variant.write_text(tomli_w.dumps(data))
    status, findings = lab.doctor(variant)
    imaps = {f["check"]: f for f in findings}["listener imaps"]
    assert imaps["level"] == "error" and "cannot connect" in imaps["summary"] and "appliance up" in imaps["fix"]
    assert status == 1


def test_no_dns_gives_one_warning_not_a_crash(lab: Lab) -> None:
    lab.serve()
    lab.knot.pause()  # a real outage: knotd stops answering, queries time out
    try:
        status, findings = lab.doctor()
    finally:
        lab.knot.resume()
    dns_findings = findings_of(findings, "dns")
    assert len(dns_findings) == 1 and dns_findings[0]["level"] == "warning"
    assert "does not answer" in dns_findings[0]["summary"] and "records not checked" in dns_findings[0]["summary"]
    assert status == 0  # warnings only: a dev box without DNS is not broken


def test_tlsa_in_an_unsigned_zone_is_a_warning(lab: Lab) -> None:
    lab.serve(signed=False)
    status, findings = lab.doctor()
    tlsa = findings_of(findings, "dns TLSA")
    assert tlsa and all(f["level"] == "warning" and "not DNSSEC-signed" in f["summary"] for f in tlsa)
    assert all(f["level"] == "ok" for f in findings_of(findings, "dns ") if f not in tlsa)
    assert status == 0
