"""A consortium of appliances, one per network namespace, on one machine.

Topology (docs/consortium.md has the diagram): a bridge namespace joins
`registry` (the TUF repository, served by `appliance registry serve`), `isp-a`, `isp-b` (members), `colo` (an
edge box relaying through isp-a with an account there), `home` (a broadband
user: a client namespace only, no port 25), `outsider` (neither member nor
customer) and `users` (isp-a's and isp-b's own customers) on a private 10.x /24
that exists only inside these namespaces.

Each box is a development box (`appliance init --dev`) whose config is then
adjusted to its role, started with `ip netns exec NS appliance -c CFG up`, so
it listens on its own namespace's address at fixed ports (10025..10034: in a
fresh namespace every port is free). Every client (swaks, the scripts in
`tests/consortium/clients.py`) runs inside a namespace too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from appliance.catalog import SERVICES
from tests.helpers.box import APPLIANCE, pids_under
from tests.helpers.netns import Host, Net
from tests.helpers.wait import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_PORT = 10025
PORTS = {"mx": 10025, "submission": 10026, "submissions": 10027, "imap": 10028, "imaps": 10029,
         "pop3": 10030, "pop3s": 10031, "metrics": 10032, "access_metrics": 10033,
         "console": 10034, "wellknown": 10035}
REGISTRY_PORT = 8080
PASSWORD = "correct horse battery staple"

# name: (last octet, domain or None for a client-only host)
HOSTS: dict[str, tuple[int, str | None]] = {
    "registry": (2, None),
    "isp-a": (10, "isp-a.test"),
    "isp-b": (20, "isp-b.test"),
    "colo": (30, "colo.test"),
    "home": (40, None),
    "outsider": (50, None),
    # Broadband customers of isp-a and isp-b (their mail clients run here).
    "users": (60, None),
}
MEMBERS = ("isp-a", "isp-b")


def _listening(host: Host, port: int) -> bool:
    out = host.run("ss", "-ltnH").stdout
    return any(line.split()[3].endswith(f":{port}") for line in out.splitlines() if len(line.split()) > 3)


@dataclass
class Appliance:
    """One box running inside its namespace."""

    name: str
    host: Host
    domain: str
    dir: Path
    passwords: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=lambda: dict(PORTS))

    @property
    def config_file(self) -> Path:
        return self.dir / "appliance.toml"

    @property
    def address(self) -> str:
        return self.host.address

    def port(self, name: str) -> int:
        return self.ports[name]

    @property
    def cert(self) -> Path:
        return self.dir / "etc/tls/cert.pem"

    def cli(self, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # Inside the namespace: a command that talks to a listener reaches this box's address.
        proc = self.host.run(*APPLIANCE, "-c", str(self.config_file), *args, input=input, timeout=timeout,
                             cwd=REPO_ROOT)
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.name}: appliance {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def edit_config(self, change: Callable[[dict[str, Any]], None]) -> None:
        data = tomllib.loads(self.config_file.read_text())
        change(data)
        self.config_file.write_text(tomli_w.dumps(data))
        self.cli("config", "check")

    def add_user(self, local: str, password: str = PASSWORD) -> str:
        address = f"{local}@{self.domain}"
        self.cli("user", "add", address, "--password-stdin", input=password + "\n")
        self.passwords[address] = password
        return address

    def up(self) -> None:
        self.cli("up", timeout=90)
        for spec in SERVICES:
            if spec.built:
                for ep in spec.endpoints:
                    # metrics: both on loopback only; an endpoint without a port here (wellknown_http) is off
                    # on a dev box.
                    if ep in self.ports and ep not in ("metrics", "access_metrics"):
                        self.wait_listening(self.ports[ep])

    def listening(self, port: int) -> bool:
        return _listening(self.host, port)

    def wait_listening(self, port: int, timeout: float = 60) -> None:
        wait_for(f"{self.name} listening on {port}", lambda: self.listening(port), timeout)

    def down(self) -> None:
        self.cli("down", check=False, timeout=90)

    def status(self) -> dict[str, Any]:
        # Exit 1 means "an alarm is raised" (docs/status.md) and still prints the report.
        proc = self.cli("status", "--json", check=False)
        assert proc.returncode in (0, 1), f"{self.name}: status exited {proc.returncode}: {proc.stderr}"
        return json.loads(proc.stdout)

    def service_pid(self, service: str, running_only: bool = True) -> int | None:
        """The service's pid from supervisor; only once RUNNING (past startsecs) unless RUNNING_ONLY is False."""
        from appliance import supervision
        from appliance.config import load

        info = supervision.process_info(load(self.config_file)) or {}
        entry = info.get(service)
        if not entry or entry.get("statename") not in (("RUNNING",) if running_only else ("RUNNING", "STARTING")):
            return None
        return int(entry["pid"]) or None

    def maildir(self, address: str, folder: str = "") -> Path:
        local, domain = address.split("@")
        base = self.dir / "mail" / domain / local
        return base / f".{folder}" if folder else base

    def inbox_files(self, address: str) -> list[Path]:
        md = self.maildir(address)
        return sorted(p for sub in ("new", "cur") for p in (md / sub).glob("*") if p.is_file())

    def queue_files(self) -> list[Path]:
        q = self.dir / "spool" / "queue"
        return [p for p in q.rglob("*") if p.is_file()] if q.exists() else []


@dataclass
class Load:
    """A load client running in a namespace; `accepted()` is its live count of 250s."""

    proc: subprocess.Popen[str]
    progress: Path

    def running(self) -> bool:
        return self.proc.poll() is None

    def accepted(self) -> int:
        try:
            return int(self.progress.read_text() or 0)
        except (OSError, ValueError):
            return 0

    def finish(self) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=600)
        if self.proc.returncode != 0:
            raise AssertionError(f"load client failed ({self.proc.returncode}): {err[-2000:]}")
        return json.loads(out)


@dataclass
class Consortium:
    """The whole world; build with `Consortium.build(tmp)`, always `teardown()`."""

    base: Path
    net: Net
    boxes: dict[str, Appliance] = field(default_factory=dict)
    registry_proc: subprocess.Popen[Any] | None = None
    poll_interval: int = 3

    def host(self, name: str) -> Host:
        return self.net.hosts[name]

    # -- building --------------------------------------------------------------------------

    @classmethod
    def build(cls, base: Path, poll_interval: int = 3) -> Consortium:
        net = Net()
        world = cls(base, net, poll_interval=poll_interval)
        try:
            for name, (octet, _) in HOSTS.items():
                net.add_host(name, octet)
            # The network rule: before any traffic, every host routes every test
            # address over its test link and has no route anywhere else.
            net.check_routes()
            world._init_boxes(poll_interval)
            world._start_registry()
            for b in world.boxes.values():
                b.up()
        except BaseException:
            world.teardown()
            raise
        return world

    def _init_boxes(self, poll_interval: int) -> None:
        for name, (_, domain) in HOSTS.items():
            if domain is None:
                continue
            d = self.base / name
            h = self.net.hosts[name]
            subprocess.run([*APPLIANCE, "init", "--dev", str(d), "--domain", domain, "--host", h.address,
                            "--base-port", str(BASE_PORT)], check=True, capture_output=True, text=True,
                           cwd=REPO_ROOT)
            self.boxes[name] = Appliance(name, h, domain, d)
        # One CA bundle holding every box's self-signed certificate: members verify
        # each other's TLS (the registry lists no pins, so it is CA-verified).
        bundle = self.base / "consortium-ca.pem"
        bundle.write_text("".join(b.cert.read_text() for b in self.boxes.values()))
        # The consortium's TUF repository, published by the operator and served from
        # the registry namespace; every box pins its root and syncs over HTTP.
        self.operator("init", "--consortium", "Consortium test world", "--code-of-practice", "2026-1")
        isp_a = self.boxes["isp-a"]
        # colo's account on isp-a: its upstream login (an edge box is isp-a's customer),
        # allowed to send as colo's users.
        colo_login = isp_a.add_user("colo")
        colo = self.boxes["colo"]
        for local in ("home",):
            colo.add_user(local)
            isp_a.cli("user", "alias", "add", colo_login, f"{local}@{colo.domain}")
        self.boxes["isp-b"].add_user("bob")
        isp_a.add_user("carol")
        isp_a.add_user("dora")  # the rate-limit scenario's customer, with a limiter history of her own
        pw_file = self.boxes["colo"].dir / "etc" / "upstream.pw"
        pw_file.write_text(PASSWORD + "\n")
        os.chmod(pw_file, 0o600)

        def common(data: dict[str, Any]) -> None:
            relay = data.setdefault("relay", {})
            relay["ca_file"] = str(bundle)
            # Short retries so crashes, suspensions and deferrals resolve within the test.
            relay["retry_initial"] = 1
            relay["retry_max"] = 3
            reg = data.setdefault("registry", {})
            reg["poll_interval"] = poll_interval
            reg["url"] = self.registry_url
            reg["root"] = str(self.repo / "public" / "metadata" / "1.root.json")

        for name, b in self.boxes.items():
            def change(data: dict[str, Any], name: str = name) -> None:
                common(data)
                if name == "isp-a":
                    # isp-a sponsors colo: it accepts colo.test on port 25 and hands it to colo's
                    # port 25 by its relay route (TLS required, verified against the CA bundle).
                    # Anything else outside the consortium is refused (the default `outside`).
                    data["relay"]["relay_domains"] = [colo.domain]
                    data["relay"]["relay_routes"] = {colo.domain: {"host": colo.address, "port": 25}}
                if name == "colo":
                    # Mail reaches colo by MX, which means port 25 (RFC 5321 5.1).
                    data["listeners"]["mx"]["port"] = colo.ports["mx"] = 25
                    data["box"]["role"] = "edge"
                    data["box"]["member_id"] = ""
                    # The consortium's closed world: an edge box defaults to verifying outsiders
                    # (docs/internet.md); this scenario keeps port 25 for members only.
                    data["relay"]["outsiders"] = "refuse"
                    data["relay"]["upstream"] = {
                        "host": isp_a.address,
                        "port": PORTS["submission"],
                        "username": colo_login,
                        "password_file": str(pw_file),
                        "ca_file": str(isp_a.cert),
                    }
            b.edit_config(change)
        for name in MEMBERS:
            b = self.boxes[name]
            # isp-a's entry lists the domain of the edge box it sponsors: members send colo.test's mail to isp-a.
            domains = [b.domain, colo.domain] if name == "isp-a" else [b.domain]
            # Generous member limits: the load scenario must measure crashes, not pacing.
            self.operator("add-member", "--without-probe", "--id", name, "--name", f"ISP {name[-1].upper()}",
                          *(x for d in domains for x in ("--domain", d)), "--abuse", f"abuse@{b.domain}",
                          "--relay", f"{b.address}:{PORTS['mx']}={b.address}/32",
                          "--messages-per-minute", "100000", "--burst", "5000", "--connections", "200")
        self.operator("publish")

    def set_member_status(self, member: str, status: str) -> None:
        """The consortium operator suspends or reactivates MEMBER and publishes."""
        self.operator("suspend" if status == "suspended" else "reactivate", member)
        self.operator("publish")

    def wait_member_status(self, box: Appliance, member: str, status: str, polls: int = 2) -> None:
        """Wait until BOX trusts a registry in which MEMBER has STATUS (bounded by POLLS poll intervals)."""
        def current() -> bool:
            try:
                reg = json.loads((box.dir / "lib" / "registry" / "registry.json").read_text())
            except (OSError, ValueError):
                return False
            return any(m["id"] == member and m["status"] == status for m in reg["members"])

        wait_for(f"{box.name} to see {member} {status}", current, polls * self.poll_interval + 10)

    @property
    def repo(self) -> Path:
        return self.base / "registry-repo"

    @property
    def registry_url(self) -> str:
        return f"http://{self.net.hosts['registry'].address}:{REGISTRY_PORT}/"

    def operator(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`appliance registry ACTION REPO ...`, the consortium operator's tools (files only, no network)."""
        proc = subprocess.run([*APPLIANCE, "registry", args[0], str(self.repo), *args[1:]], capture_output=True,
                              text=True, cwd=REPO_ROOT, timeout=120)
        if proc.returncode != 0:
            raise AssertionError(f"appliance registry {' '.join(args)}: {proc.returncode}\n{proc.stdout}{proc.stderr}")
        return proc

    def _start_registry(self) -> None:
        reg = self.net.hosts["registry"]
        log = open(self.base / "registry-serve.log", "w")
        self.registry_proc = reg.popen(*APPLIANCE, "registry", "serve", str(self.repo), "--host", reg.address,
                                       "--port", str(REGISTRY_PORT), stdout=log, stderr=subprocess.STDOUT,
                                       cwd=REPO_ROOT)
        log.close()
        wait_for("the registry server", lambda: _listening(reg, REGISTRY_PORT), 30)
        for b in self.boxes.values():
            # Forget the dev box's own one-member registry (another root): trust only the consortium's.
            shutil.rmtree(b.dir / "lib" / "registry", ignore_errors=True)
            r = b.cli("registry", "sync", "--once", check=False)
            assert r.returncode == 0, f"{b.name}: first registry sync failed: {r.stdout}{r.stderr}"

    # -- clients ---------------------------------------------------------------------------

    def client(self, where: str, *args: str, timeout: float = 120) -> dict[str, Any]:
        """Run a client script inside namespace WHERE; returns its JSON result."""
        proc = self.host(where).run(sys.executable, "-m", "tests.consortium.clients", *args,
                                    timeout=timeout, cwd=REPO_ROOT)
        if proc.returncode != 0:
            raise AssertionError(f"client {args[0]} in {where} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return json.loads(proc.stdout)

    def swaks(self, where: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.host(where).run("swaks", "--timeout", "20", *args, timeout=timeout)

    def greeting(self, where: str, box: Appliance) -> dict[str, Any]:
        return self.client(where, "greeting", "--host", box.address, "--port", str(box.port("mx")))

    def wait_greeting(self, where: str, box: Appliance, code: int, timeout: float = 15) -> dict[str, Any]:
        """The greeting WHERE gets from BOX once it is CODE (the relay re-reads registry.json every 2 s)."""
        last: dict[str, Any] = {}

        def check() -> bool:
            nonlocal last
            last = self.greeting(where, box)
            return last["code"] == code

        try:
            wait_for(f"{box.name} to greet {where} with {code}", check, timeout, interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: last greeting {last}") from None
        return last

    # -- load and crashes ------------------------------------------------------------------

    def start_load(self, where: str, box: Appliance, senders: list[str], rcpts: list[str], count: int,
                   run_tag: str, rate: float, deadline: float) -> Load:
        progress = self.base / f"{run_tag}.progress"
        creds = json.dumps([[s, box.passwords[s]] for s in senders])
        args = [sys.executable, "-m", "tests.consortium.clients", "load", "--host", box.address,
                "--port", str(PORTS["submission"]), "--cafile", str(box.cert), "--senders", creds,
                "--count", str(count), "--tag", run_tag, "--deadline", str(deadline), "--progress", str(progress),
                "--rate", str(rate)]
        for r in rcpts:
            args += ["--to", r]
        proc = self.host(where).popen(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      cwd=REPO_ROOT)
        return Load(proc, progress)

    def kill_relay_under_load(self, box: Appliance, load: Load, min_kills: int, every: tuple[int, int],
                              max_kills: int = 40) -> int:
        """kill -9 BOX's relay (its whole process group) repeatedly while LOAD runs; returns the kills made.

        Each kill waits for supervisor to have the relay RUNNING again, then for a
        random number (within EVERY) of further messages to be accepted, so every
        kill lands mid-load: in sessions, fsyncs and deliveries in flight.
        """
        import random
        import signal

        from appliance import supervision
        from appliance.config import load as load_config

        cfg = load_config(box.config_file)
        kills = 0
        while kills < max_kills and load.running():
            # Count the messages from the moment the new relay listens...
            wait_for(f"{box.name} relay started", lambda: box.service_pid("relay", running_only=False), 60)
            box.wait_listening(PORTS["submission"])
            target = load.accepted() + random.randint(*every)
            wait_for("load progress", lambda t=target: load.accepted() >= t or not load.running(), 120, interval=0.05)
            # ...but never kill inside supervisor's startsecs: that would be a failed start, not a crash.
            pid = wait_for(f"{box.name} relay RUNNING", lambda: box.service_pid("relay"), 60)
            if not load.running():
                break
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            kills += 1
            # supervisor restarts it (autorestart); should it give up (FATAL), start it
            # again explicitly, as an operator would.
            time.sleep(0.5)
            if (supervision.process_info(cfg) or {}).get("relay", {}).get("statename") == "FATAL":
                try:
                    supervision.proxy(cfg).supervisor.startProcess("relay", False)
                except xmlrpc.client.Fault as exc:
                    if "ALREADY_STARTED" not in exc.faultString:
                        raise
        wait_for(f"{box.name} relay RUNNING after the last kill", lambda: box.service_pid("relay"), 60)
        if kills < min_kills:
            raise AssertionError(f"only {kills} kills landed during the load (want {min_kills})")
        return kills

    # -- teardown --------------------------------------------------------------------------

    def teardown(self) -> list[str]:
        """Stop everything; returns what was left behind (must be empty)."""
        problems: list[str] = []
        for b in self.boxes.values():
            try:
                b.down()
            except Exception as exc:  # keep tearing down the rest
                problems.append(f"{b.name}: down failed: {exc}")
        proc = self.registry_proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        stragglers = self.net.teardown()
        problems += [f"process {p} still running in a namespace after `down`" for p in stragglers]
        problems += self.net.leftovers()
        problems += [f"process {p} left under {self.base}" for p in pids_under(self.base)]
        return problems


def copy_tree_logs(world: Consortium, dest: Path) -> None:
    """Keep the services' logs next to the test's tmp dir for a failure post-mortem."""
    for b in world.boxes.values():
        if (b.dir / "log").exists():
            shutil.copytree(b.dir / "log", dest / b.name, dirs_exist_ok=True)


def post_mortem(world: Consortium, lines: int = 30) -> str:
    """What each box's relay was doing when a scenario failed: its log's tail and, when py-spy is
    installed next to this interpreter, the stacks of the running relay (a hung event loop shows
    where it waits). Printed with the failure, so a CI log explains itself."""
    spy = Path(sys.executable).with_name("py-spy")
    out: list[str] = []
    for b in world.boxes.values():
        log = b.dir / "log" / "relay.log"
        tail = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else ["(no relay.log)"]
        out += [f"--- {b.name}: last {len(tail)} lines of relay.log", *tail]
        try:
            pid = b.service_pid("relay", running_only=False)
        except Exception as exc:  # a failing supervisor is itself the finding
            out.append(f"--- {b.name}: supervisor not answering: {exc}")
            continue
        if pid is None:
            out.append(f"--- {b.name}: relay not running")
        elif spy.exists():
            dump = subprocess.run([str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
            out += [f"--- {b.name}: py-spy dump of relay pid {pid}", dump.stdout + dump.stderr]
    return "\n".join(out)
