"""Two relays of one ISP share their limits in Redis, in network namespaces (issue #16, item 7).

A `state` namespace runs real redis-server, two box namespaces run a real relay
each (`services.relay`, `[state] backend = "shared"`), and a client namespace
sends with swaks through both. Nothing here asserts timing: where real time
lets one more message through, the bound is computed from the elapsed time.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w

from appliance.config import load
from tests.fleet.pg_server import DB, PG_BIN, ROLE, PgServer
from tests.fleet.redis_server import RedisServer
from tests.helpers.box import APPLIANCE, pids_under, run_cli
from tests.helpers.netns import Host, Net

pytestmark = [pytest.mark.peers, pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"
REDIS_PORT = 6379  # inside the state namespace: nothing else listens there
BASE_PORT = 10025  # the boxes' listeners, inside their namespaces
RATE_PER_MINUTE, RATE_BURST = 2, 3  # erin: one message every 30 s, three at once
DAILY = 5  # dave's daily quota
SERVER_LINE = re.compile(r"^<[-~*]*\s+(\d{3} .*)$")


@dataclass
class Box:
    name: str
    host: Host
    dir: Path
    config: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.dir / "relay-test.log", "ab")
        self.proc = self.host.popen(sys.executable, "-m", "services.relay", "-c", str(self.config),
                                    stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
        log.close()
        port = load(self.config).listeners.submission.port
        deadline = time.monotonic() + 60
        while not _listening(self.host, port):
            assert self.proc.poll() is None, f"{self.name}: relay exited: {self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"{self.name}: relay not listening: {self.log()[-3000:]}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None

    def cli(self, *args: str, input: str | None = None) -> str:
        """`appliance` inside the box's namespace (where the state namespace's address is routed)."""
        proc = self.host.run(*APPLIANCE, "-c", str(self.config), *args, input=input, cwd=str(REPO))
        assert proc.returncode == 0, f"{self.name}: appliance {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc.stdout

    def log(self) -> str:
        p = self.dir / "relay-test.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def delivered(self, address: str, subject: str) -> int:
        local, domain = address.split("@")
        new = Path(load(self.config).paths.mail_dir) / domain / local / "new"
        return sum(1 for p in new.iterdir() if f"Subject: {subject}".encode() in p.read_bytes()) if new.exists() else 0

    def metric(self, name: str) -> float:
        """A sample of the relay's Prometheus metrics (its listener is on loopback inside the namespace)."""
        port = load(self.config).listeners.metrics.port
        text = self.host.run("curl", "-s", "--max-time", "10", f"http://127.0.0.1:{port}/metrics").stdout
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def _listening(host: Host, port: int) -> bool:
    out = host.run("ss", "-ltnH").stdout
    return any(len(f := line.split()) > 3 and f[3].endswith(f":{port}") for line in out.splitlines())


@dataclass
class Fleet:
    net: Net
    redis: RedisServer
    boxes: list[Box]
    client: Host

    def swaks(self, box: Box, user: str, subject: str) -> str:
        port = load(box.config).listeners.submission.port
        proc = self.client.run(
            "swaks", "--server", f"{box.host.address}:{port}", "--timeout", "60", "--tls",
            "--auth", "PLAIN", "--auth-user", user, "--auth-password", PASSWORD,
            "--from", user, "--to", "bob@example.test", "--header", f"Subject: {subject}", timeout=120,
        )
        return final_reply(proc.stdout + proc.stderr)

    def delivered(self, subject: str) -> int:
        return sum(b.delivered("bob@example.test", subject) for b in self.boxes)

    def wait_delivered(self, subject: str, count: int, timeout: float = 90) -> int:
        deadline = time.monotonic() + timeout
        while (n := self.delivered(subject)) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        return n


def final_reply(swaks_output: str) -> str:
    """The reply that decided the transaction: the first error, or the reply to the end of DATA."""
    replies = [m.group(1) for line in swaks_output.splitlines() if (m := SERVER_LINE.match(line))]
    errors = [r for r in replies if r[:1] in "45"]
    if errors:
        return errors[0]
    return next((r for r in reversed(replies) if "queued as" in r), replies[-1] if replies else swaks_output[-300:])


class NamespacePg(PgServer):
    """tests/fleet/pg_server.py's PostgreSQL, run inside the state namespace and listening on its address."""

    def __init__(self, host: Host) -> None:
        super().__init__()
        self.host = host
        self.port = 5432  # the namespace's own: nothing else listens there

    def start(self) -> None:
        hba = self.data / "pg_hba.conf"
        line = f"host all all {self.host.address.rsplit('.', 1)[0]}.0/24 scram-sha-256\n"
        if line not in hba.read_text():
            hba.write_text(hba.read_text() + line)
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses={self.host.address} -c fsync=off "
                "-c shared_buffers=16MB -c max_connections=40")
        cmd = self.host.cmd("runuser", "-u", self.user, "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data),
                            "-l", str(self.dir / "log"), "-w", "-t", "30", "-o", opts, "start")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=self.dir)
        if proc.returncode != 0:
            raise RuntimeError(f"pg_ctl start in {self.host.name} exited {proc.returncode}: {proc.stderr}")
        self.running = True

    def url(self, db: str = DB) -> str:
        return f"postgresql://{ROLE}@{self.host.address}:{self.port}/{db}"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("fleet")
    net = Net()
    boxes: list[Box] = []
    redis: RedisServer | None = None
    pg: NamespacePg | None = None
    try:
        state = net.add_host("state", 1)
        hosts = [net.add_host("box1", 2), net.add_host("box2", 3)]
        client = net.add_host("client", 9)
        net.check_routes()
        redis = RedisServer(base / "redis", bind=state.address, port=REDIS_PORT, prefix=state.cmd(), persistent=True)
        redis.start()
        pg = NamespacePg(state)
        pg.init()
        for h in hosts:
            name = h.name.split("-")[0]
            # Fixed ports: they are free inside the box's own namespace (port 0 would be picked outside it).
            run_cli(None, "init", "--dev", str(base / name), "--domain", "example.test", "--host", h.address,
                    "--base-port", str(BASE_PORT))
            config = base / name / "appliance.toml"
            data = tomllib.loads(config.read_text())
            data["state"] = {"backend": "shared", "redis_url": f"redis://{state.address}:{REDIS_PORT}/0",
                             "postgres_url": pg.url(), "postgres_password_file": str(pg.password_file)}
            data["limits"] = {"connection_rate_per_ip": 600.0, "connection_burst_per_ip": 200}
            config.write_text(tomli_w.dumps(data))
            boxes.append(Box(name, h, base / name, config))
        # The accounts are the fleet's (PostgreSQL): made once, on box1, from inside its namespace.
        boxes[0].cli("db", "migrate")
        for user in ("bob", "erin", "dave"):
            boxes[0].cli("user", "add", f"{user}@example.test", "--password-stdin", input=PASSWORD + "\n")
        boxes[0].cli("user", "limits", "erin@example.test",
                     "--per-minute", str(RATE_PER_MINUTE), "--burst", str(RATE_BURST))
        boxes[0].cli("user", "limits", "dave@example.test",
                     "--per-minute", "600", "--burst", "100", "--per-day", str(DAILY))
        for b in boxes:
            b.start()
        yield Fleet(net, redis, boxes, client)
    finally:
        for b in boxes:
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


def test_customer_through_two_relays_gets_n_plus_burst_not_twice(fleet: Fleet) -> None:
    subject = "fleet-rate"
    replies = []
    start = time.monotonic()
    for i in range(4 * RATE_BURST):  # alternate relays: twelve tries, two boxes' worth of burst and more
        replies.append(fleet.swaks(fleet.boxes[i % 2], "erin@example.test", subject))
    elapsed = time.monotonic() - start
    accepted = [r for r in replies if r.startswith("250")]
    refused = [r for r in replies if not r.startswith("250")]
    # GCRA: at most the burst plus one per interval of elapsed time, fleet-wide (each box alone would allow 3 + ...).
    bound = RATE_BURST + math.floor(elapsed * RATE_PER_MINUTE / 60)
    assert RATE_BURST <= len(accepted) <= bound, (elapsed, replies)
    if elapsed < RATE_BURST * 60 / RATE_PER_MINUTE:  # (on a very slow run the refill alone could allow it)
        assert len(accepted) < 2 * RATE_BURST, replies  # not twice the burst: one allowance for the fleet
    assert refused and all(r.startswith("450 4.7.1") and "retry in" in r for r in refused), refused
    assert fleet.wait_delivered(subject, len(accepted)) == len(accepted)  # nothing accepted is lost


def test_redis_killed_mid_load_gets_451_then_recovers_without_exceeding_the_quota(fleet: Fleet) -> None:
    subject = "fleet-outage"
    user = "dave@example.test"  # 600/min, DAILY per day: the daily quota is the limit that binds
    replies: list[tuple[str, str]] = []

    def send(i: int, phase: str) -> None:
        replies.append((phase, fleet.swaks(fleet.boxes[i % 2], user, subject)))

    for i in range(2):
        send(i, "before")
    fleet.redis.kill()
    for i in range(4):
        send(i, "down")
    fleet.redis.start()  # the same address; its append-only file kept every count
    deadline = time.monotonic() + 120  # a bound, not a timing assert (the machine may be busy)
    i = 0
    while time.monotonic() < deadline and sum(r.startswith("250") for p, r in replies if p == "after") < DAILY - 2:
        send(i, "after")  # bounded by the deadline and by the quota itself
        i += 1
    for j in range(3):
        send(j, "over")
    by = {p: [r for q, r in replies if q == p] for p in ("before", "down", "after", "over")}
    assert all(r.startswith("250") for r in by["before"]), by
    # Redis unreachable: temporary, never accepted without limits, never 5xx.
    assert all(r.startswith("451 4.3.0") for r in by["down"]), by
    assert sum(r.startswith("250") for r in by["after"]) == DAILY - 2, by  # recovered by itself
    assert all(r.startswith("450 4.7.1") and "Daily" in r for r in by["over"]), by
    accepted = sum(r.startswith("250") for _, r in replies)
    assert accepted == DAILY  # exactly the quota across both relays and the outage
    assert not [r for _, r in replies if r.startswith("5")]
    assert fleet.wait_delivered(subject, accepted) == accepted  # nothing lost
    # The outage was seen and told: logged, counted, and the gauge is back to 1.
    logs = "".join(b.log() for b in fleet.boxes)
    assert "shared state: Redis" in logs and "is back" in logs
    assert sum(b.metric("relay_shared_state_errors_total") for b in fleet.boxes) >= 1
    assert [b.metric("relay_shared_state_up") for b in fleet.boxes] == [1.0, 1.0]
