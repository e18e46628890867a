"""supervisor event listener: services are retried forever, with backoff, and never down silently.

supervisor restarts a program that exits (``autorestart=true``) and retries one
that fails to start ``startretries`` times, waiting 1, 2, 3... seconds; then it
gives up and leaves the program FATAL until a human intervenes. This listener
(``[eventlistener:watchdog]`` in supervisord.conf, see appliance/supervision.py)
takes over from there:

- a FATAL program is started again after ``RETRY_MIN`` seconds, then after twice
  as long each time it ends FATAL again, up to ``RETRY_MAX``; forever. Once it
  reaches RUNNING the delay starts from ``RETRY_MIN`` again;
- a program that exits unexpectedly, or fails to start, ``FLAP_COUNT`` times
  within ``FLAP_WINDOW`` seconds is *flapping*;
- the state of every program is written to ``RUN_DIR/watchdog.json`` (read by
  `appliance status`, which shows FATAL, flapping or not running as an ALARM and
  exits non-zero) and ``RUN_DIR/services.prom`` (Prometheus textfile:
  ``appliance_service_running``, ``appliance_service_alarm``,
  ``appliance_service_unexpected_exits``).

It is driven by supervisor's PROCESS_STATE and TICK_5 events (the event listener
protocol: READY, a header line, a payload, RESULT). stdout is the protocol
channel, so this module logs to stderr only.

The listener runs for the box's whole life, so it imports the standard library
only (plus ``appliance.fsutil``, itself stdlib-only), and not even all of that:
the event protocol is a few lines here, the textfile is the Prometheus text
exposition format written directly, and each of its rare XML-RPC calls (one
at start, one per restart of a FATAL program) runs in a short-lived child
(``--rpc``), because ``xmlrpc.client`` loads http.client, ssl and OpenSSL. Its
idle memory stays near a bare interpreter's (bench/memory/idle.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from appliance import fsutil

if TYPE_CHECKING:  # the relay's collector only; the listener process never loads prometheus_client
    from prometheus_client.core import Metric

log = logging.getLogger("watchdog")

RETRY_MIN = 5.0
RETRY_MAX = 300.0
FLAP_COUNT = 3
FLAP_WINDOW = 600.0
STATE_FILE = "watchdog.json"
METRICS_FILE = "services.prom"
RPC_TIMEOUT = 30.0  # seconds one call to supervisord may take (it answers from its event loop)


@dataclass
class Program:
    name: str
    state: str = "UNKNOWN"
    delay: float = RETRY_MIN  # wait before the next restart of a FATAL program
    next_retry: float | None = None  # epoch seconds; set while FATAL
    restarts: int = 0  # restarts this listener made
    failures: deque[float] = field(default_factory=deque)  # unexpected exits and failed starts

    def flapping(self, now: float) -> bool:
        while self.failures and self.failures[0] < now - FLAP_WINDOW:
            self.failures.popleft()
        return len(self.failures) >= FLAP_COUNT

    def alarm(self, now: float) -> str | None:
        if self.state == "FATAL":
            return f"FATAL (supervisor gave up); watchdog restart #{self.restarts + 1} at {_iso(self.next_retry)}"
        if self.flapping(now):
            return f"flapping: {len(self.failures)} unexpected exits or failed starts in {FLAP_WINDOW:.0f}s"
        if self.state not in ("RUNNING", "STARTING"):
            return f"{self.state}"
        return None


class Watchdog:
    def __init__(self, run_dir: Path, rpc: Any, retry_min: float = RETRY_MIN, retry_max: float = RETRY_MAX) -> None:
        self.run_dir = run_dir
        self.rpc = rpc
        self.retry_min, self.retry_max = retry_min, retry_max
        self.programs: dict[str, Program] = {}

    def _program(self, name: str) -> Program:
        p = self.programs.get(name)
        if p is None:
            p = self.programs[name] = Program(name, delay=self.retry_min)
        return p

    def handle(self, headers: dict[str, str], payload: str, now: float) -> None:
        event = headers.get("eventname", "")
        if event.startswith("PROCESS_STATE_"):
            fields = parse_headers(payload.split("\n", 1)[0])
            name = fields.get("processname", "")
            if name and name != "watchdog":
                self._state(self._program(name), event.removeprefix("PROCESS_STATE_"), fields, now)
        elif event.startswith("TICK_"):
            self._tick(now)
        self.write(now)

    def _state(self, p: Program, state: str, fields: dict[str, str], now: float) -> None:
        p.state = state
        if state == "EXITED" and fields.get("expected") == "0":
            p.failures.append(now)
        elif state == "BACKOFF":
            p.failures.append(now)
        elif state == "FATAL":
            p.next_retry = now + p.delay
            log.error("%s is FATAL: supervisor gave up; restarting it in %.0fs", p.name, p.delay)
        elif state == "RUNNING":
            if p.next_retry is not None or p.delay != self.retry_min:
                log.warning("%s is RUNNING again", p.name)
            p.next_retry, p.delay = None, self.retry_min

    def _tick(self, now: float) -> None:
        for p in self.programs.values():
            if p.state == "FATAL" and p.next_retry is not None and now >= p.next_retry:
                p.restarts += 1
                p.delay = min(p.delay * 2, self.retry_max)
                p.next_retry = now + p.delay  # in case the start call itself fails
                try:
                    self.rpc.supervisor.startProcess(p.name, False)
                    log.warning("%s: restart #%d after FATAL (next wait %.0fs if it fails again)",
                                p.name, p.restarts, p.delay)
                except Exception as exc:  # an RPC fault (e.g. already starting): retried at the next tick
                    log.error("%s: restart failed: %s", p.name, exc)

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "updated": now,
            "programs": {
                p.name: {
                    "state": p.state,
                    "alarm": p.alarm(now),
                    "flapping": p.flapping(now),
                    "unexpected_exits": len(p.failures),
                    "watchdog_restarts": p.restarts,
                    "next_retry": p.next_retry,
                }
                for p in self.programs.values()
            },
        }

    def write(self, now: float) -> None:
        snap = self.snapshot(now)
        try:
            fsutil.atomic_write(self.run_dir / STATE_FILE, json.dumps(snap, indent=2, sort_keys=True) + "\n",
                                mode=0o644)
            progs = snap["programs"]
            text = "".join((
                _gauge("appliance_service_running", "1 while supervisor reports the service RUNNING",
                       {n: 1 if p["state"] == "RUNNING" else 0 for n, p in progs.items()}),
                _gauge("appliance_service_alarm", "1 while the service is FATAL, flapping or not running",
                       {n: 1 if p["alarm"] else 0 for n, p in progs.items()}),
                _gauge("appliance_service_unexpected_exits",
                       f"Unexpected exits and failed starts in the last {FLAP_WINDOW:.0f}s",
                       {n: p["unexpected_exits"] for n, p in progs.items()}),
            ))
            fsutil.atomic_write(self.run_dir / METRICS_FILE, text, mode=0o644)
        except OSError as exc:
            log.error("state not written: %s", exc)

    def seed(self, now: float) -> None:
        """Learn every program's current state (the listener may start after them, or restart)."""
        try:
            infos = self.rpc.supervisor.getAllProcessInfo()
        except Exception as exc:
            log.error("cannot read process states: %s", exc)
            return
        for info in infos:
            if info["name"] != "watchdog":
                p = self._program(info["name"])
                p.state = str(info["statename"])
                if p.state == "FATAL":
                    p.next_retry = now + p.delay
        self.write(now)


def read_state(run_dir: Path) -> dict[str, Any] | None:
    """watchdog.json, or None when it is missing or unreadable (the watchdog is not running)."""
    try:
        data = json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("programs"), dict) else None


class ServiceStateCollector:
    """Prometheus collector for the relay's /metrics: every service's running/alarm state, read from
    watchdog.json at each scrape (``appliance_service_*``). No report at all is itself an alarm."""

    def __init__(self, run_dir: Path, services: list[str]) -> None:
        self.run_dir, self.services = run_dir, services

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily  # loaded already in the relay that scrapes

        running = GaugeMetricFamily("appliance_service_running", "1 while supervisor reports the service RUNNING",
                                    labels=["service"])
        alarm = GaugeMetricFamily("appliance_service_alarm",
                                  "1 while the service is FATAL, flapping or not running (watchdog: no report)",
                                  labels=["service"])
        st = read_state(self.run_dir)
        programs = st["programs"] if st else {}
        for name in self.services:
            p = programs.get(name) or {}
            running.add_metric([name], 1 if p.get("state") == "RUNNING" else 0)
            alarm.add_metric([name], 1 if (st is None or p.get("alarm") or not p) else 0)
        alarm.add_metric(["watchdog"], 0 if st is not None else 1)
        yield running
        yield alarm


def _iso(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else "?"


# --- Prometheus text exposition format (version 0.0.4), as node_exporter's textfile collector reads it.

def _escape(value: str, quote: bool) -> str:
    # HELP text escapes backslash and newline; label values also escape the double quote.
    value = value.replace("\\", "\\\\").replace("\n", "\\n")
    return value.replace('"', '\\"') if quote else value


def _gauge(name: str, doc: str, by_service: dict[str, float]) -> str:
    lines = [f"# HELP {name} {_escape(doc, False)}", f"# TYPE {name} gauge"]
    lines += [f'{name}{{service="{_escape(svc, True)}"}} {float(v)!r}' for svc, v in by_service.items()]
    return "\n".join(lines) + "\n"


# --- supervisor's event listener protocol and its XML-RPC interface (stdlib only).

def parse_headers(line: str) -> dict[str, str]:
    """``key:value key:value ...`` (the event header line and the payload's first line)."""
    return dict(token.split(":", 1) for token in line.split())


def wait_event(stdin: BinaryIO, stdout: BinaryIO) -> tuple[dict[str, str], str]:
    """Say READY, then read one event: a header line, then exactly ``len`` bytes of payload."""
    stdout.write(b"READY\n")
    stdout.flush()
    line = stdin.readline()
    if not line:
        raise EOFError("supervisord closed the event channel")
    headers = parse_headers(line.decode("utf-8", "replace"))
    payload = stdin.read(int(headers["len"]))
    return headers, payload.decode("utf-8", "replace")


def acknowledge(stdout: BinaryIO) -> None:
    stdout.write(b"RESULT 2\nOK")
    stdout.flush()


class RPCError(Exception):
    """A supervisord XML-RPC call that failed (a fault, or supervisord unreachable); one line."""


class ChildRPC:
    """``rpc.supervisor.startProcess(name, False)`` and the like, as on an ``xmlrpc.client.ServerProxy``,
    each call made by a child ``python -m appliance.watchdog --rpc METHOD ARGS``."""

    def __init__(self, method: str = "") -> None:
        self._method = method

    def __getattr__(self, name: str) -> ChildRPC:
        if name.startswith("_"):
            raise AttributeError(name)
        return ChildRPC(f"{self._method}.{name}" if self._method else name)

    def __call__(self, *args: Any) -> Any:
        cmd = [sys.executable, "-m", "appliance.watchdog", "--rpc", self._method, json.dumps(args)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RPC_TIMEOUT + 10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RPCError(f"{self._method}: {exc}") from None
        try:
            answer = json.loads(proc.stdout)
        except ValueError:
            err = proc.stderr.strip().splitlines()
            raise RPCError(f"{self._method}: {err[-1] if err else f'exit status {proc.returncode}'}") from None
        if "fault" in answer:
            raise RPCError(f"{self._method}: {answer['fault']}")
        return answer["result"]


def rpc_interface(env: Mapping[str, str]) -> Any:
    """supervisord's XML-RPC interface from the environment it gives its listeners
    (SUPERVISOR_SERVER_URL, and SUPERVISOR_USERNAME/PASSWORD when it has credentials)."""
    import http.client
    import socket
    import urllib.parse
    import xmlrpc.client

    class UnixHTTPConnection(http.client.HTTPConnection):
        def __init__(self, path: str) -> None:
            super().__init__("localhost", timeout=RPC_TIMEOUT)
            self._path = path

        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(RPC_TIMEOUT)
            try:
                sock.connect(self._path)
            except OSError:
                sock.close()
                raise
            self.sock = sock

    class UnixTransport(xmlrpc.client.Transport):
        """XML-RPC over supervisord's ``unix://`` socket."""

        def __init__(self, path: str) -> None:
            super().__init__()
            self._path = path

        def make_connection(self, host: Any) -> http.client.HTTPConnection:
            _, self._extra_headers, _ = self.get_host_info(host)  # Basic auth from the URL, if any
            return UnixHTTPConnection(self._path)

    url = env["SUPERVISOR_SERVER_URL"]
    user, password = env.get("SUPERVISOR_USERNAME", ""), env.get("SUPERVISOR_PASSWORD", "")
    auth = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}@" if user else ""
    if url.startswith("unix://"):
        return xmlrpc.client.ServerProxy(f"http://{auth}localhost/RPC2", transport=UnixTransport(url[len("unix://"):]))
    parts = urllib.parse.urlsplit(url)
    return xmlrpc.client.ServerProxy(f"{parts.scheme}://{auth}{parts.netloc}/RPC2")


def rpc_call(method: str, args_json: str) -> int:
    """The child's side of ``ChildRPC``: one call, its result (or fault) as JSON on stdout."""
    import xmlrpc.client

    fn = rpc_interface(os.environ)
    for part in method.split("."):
        fn = getattr(fn, part)
    try:
        result = fn(*json.loads(args_json))
    except xmlrpc.client.Fault as exc:
        print(json.dumps({"fault": exc.faultString}))
        return 1
    print(json.dumps({"result": result}))
    return 0


def serve(dog: Watchdog, stdin: BinaryIO, stdout: BinaryIO) -> None:
    dog.seed(time.time())
    while True:
        headers, payload = wait_event(stdin, stdout)
        try:
            dog.handle(headers, payload, time.time())
        except Exception:  # never stall supervisor's event queue: log and acknowledge
            log.exception("event %s not handled", headers.get("eventname"))
        acknowledge(stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.watchdog", description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", type=Path)
    ap.add_argument("--retry-min", type=float, default=RETRY_MIN)
    ap.add_argument("--retry-max", type=float, default=RETRY_MAX)
    ap.add_argument("--rpc", nargs=2, metavar=("METHOD", "ARGS_JSON"), help=argparse.SUPPRESS)  # ChildRPC
    args = ap.parse_args(argv)
    if args.rpc:
        return rpc_call(*args.rpc)
    if args.run_dir is None:
        ap.error("--run-dir is required")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 0 < args.retry_min <= args.retry_max:
        log.error("--retry-min must be > 0 and <= --retry-max")
        return 2
    try:
        serve(Watchdog(args.run_dir, ChildRPC(), args.retry_min, args.retry_max), sys.stdin.buffer, sys.stdout.buffer)
    except EOFError:  # supervisord is shutting down
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
