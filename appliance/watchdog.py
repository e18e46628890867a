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
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from prometheus_client.core import GaugeMetricFamily, Metric
from supervisor import childutils

from appliance import fsutil

log = logging.getLogger("watchdog")

RETRY_MIN = 5.0
RETRY_MAX = 300.0
FLAP_COUNT = 3
FLAP_WINDOW = 600.0
STATE_FILE = "watchdog.json"
METRICS_FILE = "services.prom"


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
            fields = childutils.get_headers(payload.split("\n", 1)[0])
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
            reg = CollectorRegistry()
            running = Gauge("appliance_service_running", "1 while supervisor reports the service RUNNING",
                            ["service"], registry=reg)
            alarm = Gauge("appliance_service_alarm", "1 while the service is FATAL, flapping or not running",
                          ["service"], registry=reg)
            exits = Gauge("appliance_service_unexpected_exits",
                          f"Unexpected exits and failed starts in the last {FLAP_WINDOW:.0f}s", ["service"], registry=reg)
            for name, p in snap["programs"].items():
                running.labels(name).set(1 if p["state"] == "RUNNING" else 0)
                alarm.labels(name).set(1 if p["alarm"] else 0)
                exits.labels(name).set(p["unexpected_exits"])
            write_to_textfile(str(self.run_dir / METRICS_FILE), reg)
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


def serve(dog: Watchdog, stdin: TextIO, stdout: TextIO) -> None:
    dog.seed(time.time())
    while True:
        headers, payload = childutils.listener.wait(stdin, stdout)
        try:
            dog.handle(headers, payload, time.time())
        except Exception:  # never stall supervisor's event queue: log and acknowledge
            log.exception("event %s not handled", headers.get("eventname"))
        childutils.listener.ok(stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.watchdog", description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--retry-min", type=float, default=RETRY_MIN)
    ap.add_argument("--retry-max", type=float, default=RETRY_MAX)
    args = ap.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 0 < args.retry_min <= args.retry_max:
        log.error("--retry-min must be > 0 and <= --retry-max")
        return 2
    rpc = childutils.getRPCInterface(os.environ)
    serve(Watchdog(args.run_dir, rpc, args.retry_min, args.retry_max), sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
