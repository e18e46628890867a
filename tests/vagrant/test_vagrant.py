"""`vagrant up` of the whole demo consortium, as the README's "Try it in Vagrant" runs it.

Host set-up (libvirt's daemons by hand where systemd is not PID 1, a storage pool, two
isolated networks checked for `<forward>` before anything boots), the box `make image`
builds (shared with tests/image: one build per `make test`), then the README's commands:
`vagrant box add`, `vagrant up` of registry, isp-a, isp-b and colo (KVM where it works,
else qemu's software emulation), `image-build/vagrant-consortium.sh`, the demo users, and
through `vagrant ssh`: a colo user sends by IMAP UID SENDMAIL, the mail goes colo -> isp-a
-> isp-b, an isp-b user reads it over POP; `appliance status` on each machine shows its own
name, member id and the registry version. Everything is destroyed afterwards, also on failure.
Each stage's time is printed (and written to build/vagrant-stats.json).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.image.imagetools import BUILD, REPO, ensure_image
from tests.vagrant.libvirthost import POOL_DIR, LibvirtHost, kvm_works

pytestmark = [pytest.mark.slow, pytest.mark.root]

MACHINES = ("registry", "isp-a", "isp-b", "colo")
# machine: (box.hostname, box.member_id) of its pillar (image-build/vagrant-pillar/)
IDENTITY = {"registry": ("registry.consortium.test", "registry"), "isp-a": ("mx.isp-a.test", "isp-a"),
            "isp-b": ("mx.isp-b.test", "isp-b"), "colo": ("mx.colo.test", "")}
ADDRESS = {"registry": "192.168.77.10", "isp-a": "192.168.77.11", "isp-b": "192.168.77.12", "colo": "192.168.77.20"}
PREFIX = "appliance-test-"
CERT = "/etc/appliance/tls/selfsigned/cert.pem"
ALICE, BOB = "alice@colo.test", "bob@isp-b.test"
PASSWORD = "a demo password for the vagrant test"
UP_TIMEOUT = 45 * 60
CLIENT = Path(__file__).with_name("vmclient.py")


@dataclass
class Demo:
    env: dict[str, str]
    log: Path
    say: Any
    stages: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def run(self, *argv: str, timeout: float = 600, input: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """ARGV with its output captured (and copied to the log)."""
        with self.log.open("a") as log:
            log.write(f"\n$ {shlex.join(argv)}\n")
        # No input: stdin is /dev/null, never the terminal pytest may have (ssh would read it).
        proc = subprocess.run(list(argv), cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout, input=input if input is not None else "")
        with self.log.open("a") as log:
            log.write(proc.stdout + proc.stderr + f"[exit {proc.returncode}]\n")
        if check and proc.returncode != 0:
            raise AssertionError(f"{shlex.join(argv)} exited {proc.returncode}:\n"
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}")
        return proc

    def stream(self, *argv: str, timeout: float) -> None:
        """A long command (vagrant up, destroy): its output goes to the log as it comes, each line
        stamped with the seconds since the command started. Under software emulation on a loaded
        host one step can take minutes; without the stamps that read as a hang (issue 20)."""
        with self.log.open("a") as log:
            log.write(f"\n$ {shlex.join(argv)}\n")
            log.flush()
            start = log.tell()
            t0 = time.monotonic()
            proc = subprocess.Popen(list(argv), cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

            def copy() -> None:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    log.write(f"[{time.monotonic() - t0:7.1f}s] {raw.decode(errors='replace')}")
                    log.flush()

            copier = threading.Thread(target=copy, daemon=True)
            copier.start()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                copier.join(timeout=10)
                log.write(f"[timeout after {timeout:.0f}s]\n")
                raise
            copier.join(timeout=10)
            log.write(f"[exit {proc.returncode} after {time.monotonic() - t0:.0f}s]\n")
        if proc.returncode != 0:
            with self.log.open("rb") as log:
                log.seek(start)
                tail = log.read().decode(errors="replace")[-5000:]
            raise AssertionError(f"{shlex.join(argv)} exited {proc.returncode}:\n{tail}")

    def ssh(self, machine: str, command: str, input: str | None = None, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`vagrant ssh MACHINE --no-tty -c COMMAND`, the README's form."""
        return self.run("vagrant", "ssh", machine, "--no-tty", "-c", command, input=input, check=check,
                        timeout=timeout)

    def stage(self, name: str, started: float) -> None:
        self.stages[name] = round(time.monotonic() - started, 1)
        self.say(f"vagrant-test stage {name}: {self.stages[name]:.0f}s")


@pytest.fixture(scope="module")
def demo(pytestconfig: pytest.Config) -> Iterator[Demo]:
    if os.geteuid() != 0:
        pytest.skip("libvirt's system daemons, networks and the image build need root")
    for tool in ("vagrant", "virsh", "libvirtd", "virtlogd", "qemu-system-x86_64", "rsync", "openssl"):
        if shutil.which(tool) is None:
            pytest.fail(f"missing {tool}: run `make deps-debian`")
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")

    def say(line: str) -> None:
        if reporter is not None:
            reporter.write_line(line)

    # Not pytest's tmp_path: other pytest runs on the machine rotate /tmp/pytest-of-USER away under
    # a long session, and Vagrant's state and box live here. Removed at the end.
    work = Path(tempfile.mkdtemp(prefix="appliance-vagrant-", dir="/var/tmp"))
    # Under /var/lib/libvirt/images, not the test's temp dir: qemu runs as libvirt-qemu and must
    # reach its disks (pytest's /tmp/pytest-of-root is 0700).
    host = LibvirtHost(POOL_DIR)
    env = {**os.environ, "VAGRANT_HOME": str(work / "vagrant.d"), "VAGRANT_DOTFILE_PATH": str(work / "dot-vagrant"),
           "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_DEFAULT_PROVIDER": "libvirt", "APPLIANCE_PREFIX": PREFIX,
           "LIBVIRT_DEFAULT_URI": "qemu:///system"}
    BUILD.mkdir(parents=True, exist_ok=True)
    log = BUILD / "vagrant-commands.log"  # every command and its output, kept after the run
    log.write_text("")
    d = Demo(env, log, say)
    t_all = time.monotonic()
    try:
        host.start_daemons()
        accel = d.facts["accel"] = "kvm" if kvm_works() else "qemu"
        env["VAGRANT_LIBVIRT_DRIVER"] = accel
        if accel == "qemu":
            env["APPLIANCE_VM_CPUS"] = "1"  # software emulation: one vCPU each shares 2 host cores best
        say(f"vagrant-test: accelerator {accel}; commands and output in {d.log}")

        t = time.monotonic()
        reused = ensure_image()  # build/appliance.box, shared with tests/image (stamped by its inputs)
        d.stage("image" + (" (reused)" if reused else ""), t)

        t = time.monotonic()
        host.remove_domains(PREFIX)  # an interrupted earlier run's machines
        host.define()
        d.facts["forward"] = host.forward_elements()
        # The network rule, before any machine exists: nothing is forwarded off the host.
        assert d.facts["forward"] == {"appliance-mgmt": [], "appliance-demo": []}, d.facts["forward"]
        d.stage("libvirt", t)

        t = time.monotonic()
        d.stream("vagrant", "box", "add", "--force", "--name", "isp-appliance", str(BUILD / "appliance.box"),
                 timeout=900)
        d.stage("box add", t)

        t = time.monotonic()
        # One machine booting at a time: four under software emulation at once starve each other
        # (and the host) for minutes. The "hang" once seen here was that slowness cut short
        # (docs/testing.md, issue 20).
        d.stream("vagrant", "up", "--provider=libvirt", "--no-parallel", timeout=UP_TIMEOUT)
        d.stage("vagrant up", t)

        t = time.monotonic()
        d.stream("image-build/vagrant-consortium.sh", timeout=1200)
        d.stage("consortium", t)

        t = time.monotonic()
        d.ssh("colo", f"sudo appliance user add {ALICE} --password-stdin", input=PASSWORD + "\n")
        d.ssh("isp-a", f"sudo appliance user alias add colo@isp-a.test {ALICE}")
        d.ssh("isp-b", f"sudo appliance user add {BOB} --password-stdin", input=PASSWORD + "\n")
        d.stage("users", t)
        yield d
    finally:
        if os.environ.get("VAGRANT_TEST_KEEP") == "1":
            # Debugging only: leave everything up; these variables reach the machines again.
            keep = " ".join(f"{k}={env[k]}" for k in ("VAGRANT_HOME", "VAGRANT_DOTFILE_PATH", "VAGRANT_LIBVIRT_DRIVER",
                                                      "APPLIANCE_PREFIX") if k in env)
            say(f"vagrant-test: VAGRANT_TEST_KEEP=1, nothing destroyed: {keep}")
        else:
            teardown(d, host, work, t_all)


def teardown(d: Demo, host: LibvirtHost, work: Path, t_all: float) -> None:
    """`vagrant destroy -f`, then whatever it left, the pool, the networks and the daemons started here."""
    t = time.monotonic()
    try:
        if (work / "dot-vagrant").exists():
            d.run("vagrant", "destroy", "-f", timeout=900, check=False)
        left = host.remove_domains(PREFIX)
        if left:
            d.say(f"vagrant-test: removed domains vagrant destroy left: {left}")
        host.remove()
    finally:
        host.stop_daemons()
        shutil.rmtree(work, ignore_errors=True)  # Vagrant's state and the added box
    d.stage("destroy", t)
    d.say(f"vagrant-test: every command and its output: {d.log}")
    d.stages["total"] = round(time.monotonic() - t_all, 1)
    accel = d.facts.get("accel", "?")
    d.say(f"vagrant-test total: {d.stages['total']:.0f}s ({accel})")
    BUILD.mkdir(parents=True, exist_ok=True)
    (BUILD / "vagrant-stats.json").write_text(json.dumps(
        {"accel": accel, "stages_seconds": d.stages,
         "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")


def status(demo: Demo, machine: str) -> dict[str, Any]:
    # Exit 1 is "an alarm is raised" and still prints the report (docs/status.md).
    proc = demo.ssh(machine, "sudo appliance status --json", check=False)
    assert proc.returncode in (0, 1), f"{machine}: status exited {proc.returncode}: {proc.stderr}"
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def published_version(demo: Demo) -> int:
    """The targets version the operator published (the highest N.targets.json served)."""
    names = demo.ssh("registry", "ls /srv/registry/metadata").stdout.split()
    versions = [int(m.group(1)) for n in names if (m := re.fullmatch(r"(\d+)\.targets\.json", n))]
    assert versions, f"nothing published under /srv/registry/metadata: {names}"
    return max(versions)


def test_networks_were_isolated_before_boot(demo: Demo) -> None:
    assert demo.facts["forward"] == {"appliance-mgmt": [], "appliance-demo": []}


def test_each_machine_shows_its_name_member_id_and_the_registry_version(demo: Demo) -> None:
    version = published_version(demo)
    for machine in MACHINES:
        hostname, member_id = IDENTITY[machine]
        st = status(demo, machine)
        assert st["box"]["hostname"] == hostname, (machine, st["box"])
        assert (st["box"]["member_id"] or "") == member_id, (machine, st["box"])
        assert st["registry"]["source"] == "http://192.168.77.10:8080/", (machine, st["registry"])
        assert st["registry"]["version"] == version, (machine, st["registry"])
        assert st["registry"]["members"] == 2, (machine, st["registry"])
        # Its certificate names the machine (issued again by its highstate, not the image's).
        subject = demo.ssh(machine, f"sudo openssl x509 -noout -subject -in {CERT}").stdout
        assert re.search(rf"CN\s*=\s*{re.escape(hostname)}\s*$", subject.strip()), (machine, subject)
        # Its demo address is the Vagrantfile's static one (Vagrant's networkd file applied).
        addrs = demo.ssh(machine, "ip -4 -o addr show").stdout
        assert f"inet {ADDRESS[machine]}/24" in addrs, (machine, addrs)


def test_mail_from_colo_by_uid_sendmail_reaches_isp_b_over_isp_a_and_is_read_by_pop(demo: Demo) -> None:
    token = f"token-{time.time_ns()}"
    script = CLIENT.read_text()
    sent = demo.ssh("colo", shlex.join(["sudo", "python3", "-", "send", "mx.colo.test", CERT, ALICE, PASSWORD,
                                        ALICE, BOB, token]), input=script)
    out = json.loads(sent.stdout.strip().splitlines()[-1])
    assert out["sendmail"] == "OK", out
    assert "$Submitted" in out["flags"] and "$SubmitPending" not in out["flags"], out
    assert out["cert"] == {"cn": "mx.colo.test", "dns": ["mx.colo.test"]}, out
    got = demo.ssh("isp-b", shlex.join(["sudo", "python3", "-", "fetch", "mx.isp-b.test", CERT, BOB, PASSWORD,
                                        token, "240"]), input=script, timeout=400)
    res = json.loads(got.stdout.strip().splitlines()[-1])
    assert res["found"], f"{BOB} has no message with {token} after {res['polls']} POP polls: {res}"
    assert res["cert"] == {"cn": "mx.isp-b.test", "dns": ["mx.isp-b.test"]}, res
    # The path, newest hop first: isp-b received it from isp-a, isp-a from colo.
    received = " ".join(res["received"])
    assert all(f"by {h}" in received for h in ("mx.isp-b.test", "mx.isp-a.test", "mx.colo.test")), res["received"]
    assert f"From: {ALICE}" in res["message"]
