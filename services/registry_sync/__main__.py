"""`python -m services.registry_sync -c CONFIG`: poll the consortium registry until stopped.

Each round is ``appliance.registry.agent.run_round`` (the same code as
`appliance registry sync --once`). Polls are jittered by up to 10% of
``registry.poll_interval`` so the boxes of a consortium do not all hit the
registry server in the same second. The relay notices a new registry.json by
its mtime (docs/ARCHITECTURE.md), so nothing has to be signalled.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
import threading

from appliance.config import ConfigError, load
from appliance.registry.agent import run_round


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="registry_sync")
    parser.add_argument("-c", "--config", default=None)
    parser.add_argument("--once", action="store_true", help="one round, then exit (0 when current)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s registry_sync %(levelname)s %(message)s",
                        stream=sys.stdout)
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(f"registry_sync: config error: {exc}", file=sys.stderr)
        return 2
    if args.once:
        return 0 if run_round(cfg).ok else 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log = logging.getLogger("registry_sync")
    log.info("polling %s every %ss", cfg.registry.url or "local registry.json", cfg.registry.poll_interval)
    while not stop.is_set():
        try:
            run_round(cfg)
        except Exception:  # a bug must not stop the polling; the next round retries
            log.exception("round failed")
        interval = cfg.registry.poll_interval
        stop.wait(interval * random.uniform(0.9, 1.1))
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
