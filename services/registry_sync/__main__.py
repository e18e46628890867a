"""`python -m services.registry_sync -c CONFIG`: poll the consortium registry until stopped.

Each round is ``appliance.registry.agent.run_round`` (the same code as
`appliance registry sync --once`). Polls are jittered by up to 10% of
``registry.poll_interval`` so the boxes of a consortium do not all hit the
registry server in the same second. The relay notices a new registry.json by
its mtime (docs/ARCHITECTURE.md), so nothing has to be signalled.

The service itself is a small stdlib-only loop: every round runs in a
short-lived child (``--once --report-fd N``) that loads the config, the TUF
client and the crypto libraries, syncs, reports the next poll interval on fd N
and exits. Between polls nothing of python-tuf, securesystemslib, urllib3,
cryptography or pydantic stays in memory (they would hold about 40 MB for a
process that works a few seconds per poll; bench/memory/idle.py).

Each child reads the config afresh. A config the child refuses (exit status 2,
the one-line error in this service's log) stops the service with status 2, as a
bad config at start-up always did; supervisor and the watchdog then report it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading

EXIT_CONFIG = 2
# A round that has not finished after this long is stuck (ngclient's own socket timeouts have
# failed): it is killed, and the next poll retries. The relay checks expiry itself, so nothing fails open.
ROUND_TIMEOUT = 600.0
# Used only when a child died before it could report the configured interval.
FALLBACK_INTERVAL = 60.0

log = logging.getLogger("registry_sync")


def run_once(config: str | None, report_fd: int | None) -> int:
    """One round in this process: exit status 0 when current, 1 refused, 2 bad config."""
    from appliance.config import ConfigError, load
    from appliance.registry.agent import run_round

    try:
        cfg = load(config)
    except ConfigError as exc:
        print(f"registry_sync: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if report_fd is not None:
        # Told before the round, so a round that crashes still leaves the parent its schedule.
        with os.fdopen(report_fd, "w") as fh:
            json.dump({"poll_interval": cfg.registry.poll_interval,
                       "source": cfg.registry.url or "local registry.json"}, fh)
    return 0 if run_round(cfg).ok else 1


def _child_round(config: str | None, stop: threading.Event) -> tuple[int | None, dict[str, object]]:
    """Run one round in a child; (its exit status, or None when stopped or killed; what it reported)."""
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", "services.registry_sync", "--once", "--report-fd", str(write_fd)]
    if config is not None:
        cmd += ["-c", config]
    try:
        with os.fdopen(read_fd) as report_pipe:
            try:
                proc = subprocess.Popen(cmd, pass_fds=(write_fd,))  # stdout/stderr: this service's log
            finally:
                os.close(write_fd)
            waited = 0.0
            while True:
                try:
                    rc = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    waited += 0.5
                    if stop.is_set() or waited >= ROUND_TIMEOUT:
                        if not stop.is_set():
                            log.error("round still running after %.0fs: killed; the next poll retries", ROUND_TIMEOUT)
                        proc.kill()
                        proc.wait()
                        return None, {}
            # The report is a few bytes written before the round: it sits in the pipe's buffer.
            raw = report_pipe.read(4096)
    except OSError as exc:  # cannot start a child (process limits, memory): the next poll retries
        log.error("round not started: %s", exc)
        return None, {}
    try:
        report = json.loads(raw) if raw else {}
    except ValueError:
        report = {}
    return (None if stop.is_set() else rc), (report if isinstance(report, dict) else {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="registry_sync")
    parser.add_argument("-c", "--config", default=None)
    parser.add_argument("--once", action="store_true", help="one round, then exit (0 when current)")
    parser.add_argument("--report-fd", type=int, default=None, help=argparse.SUPPRESS)  # the service's child
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s registry_sync %(levelname)s %(message)s",
                        stream=sys.stdout)
    if args.once:
        return run_once(args.config, args.report_fd)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    announced = False
    while not stop.is_set():
        rc, report = _child_round(args.config, stop)
        if rc == EXIT_CONFIG and not report:
            return EXIT_CONFIG  # the child printed which key is wrong
        interval = report.get("poll_interval")
        if not isinstance(interval, int | float) or interval <= 0:
            interval = FALLBACK_INTERVAL
        if not announced and report:
            log.info("polling %s every %ss (each round in a child process)", report.get("source"), interval)
            announced = True
        if rc not in (0, 1, None):
            log.error("round failed (exit status %s); the next poll retries", rc)
        stop.wait(interval * random.uniform(0.9, 1.1))
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
