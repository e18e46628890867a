"""`python -m services.console -c CONFIG`: the web console over HTTPS (supervisor runs it).

Refuses a bad config before listening (exit 2). Samples the box's counters into the time-series
store at start and then every minute (appliance/console/timeseries.py).
"""

from __future__ import annotations

import argparse
import os
import sys

from OpenSSL import SSL
from twisted.internet import reactor, threads
from twisted.internet.error import CannotListenError
from twisted.python import log

from appliance.config import CONFIG_ENV, DEFAULT_CONFIG, ConfigError, load
from appliance.console.timeseries import SOURCES, read_now
from services.twisted_tls import TLSContext

SAMPLE_INTERVAL = 60.0
STARTUP_INTERVAL = 2.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.console")
    ap.add_argument("-c", "--config", default=os.environ.get(CONFIG_ENV, DEFAULT_CONFIG))
    args = ap.parse_args(argv)
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(f"console: {exc}", file=sys.stderr)
        return 2
    from services.console.app import Console, missing_dependencies
    from services.console.web import site

    missing = missing_dependencies()
    if missing:  # imported only at the first page: refused here, so `appliance up` fails, not a request
        print(f"console: cannot start: the {', '.join(missing)} package is not installed", file=sys.stderr)
        return 1
    try:
        console = Console(cfg)
        tls = TLSContext(cfg.tls.cert, cfg.tls.key)
    except (OSError, SSL.Error) as exc:
        print(f"console: cannot start: {exc}", file=sys.stderr)
        return 2
    log.startLogging(sys.stdout, setStdout=False)
    lst = cfg.listeners.console
    if lst.enabled:
        try:
            reactor.listenSSL(lst.port, site(console.route), tls, interface=lst.host)  # type: ignore[attr-defined]
        except CannotListenError as exc:
            print(f"console: cannot listen on listeners.console {lst.host}:{lst.port}: {exc.socketError}",
                  file=sys.stderr)
            return 1
        print(f"console: listening on https://{lst.host}:{lst.port}/", flush=True)
    else:
        print("console: listeners.console is disabled; only sampling the graphs' counters", flush=True)
    wk = cfg.listeners.wellknown
    if wk.enabled:
        from services.console.wellknown import wellknown_factory

        try:
            reactor.listenSSL(wk.port, wellknown_factory(console), tls, interface=wk.host)  # type: ignore[attr-defined]
        except CannotListenError as exc:
            print(f"console: cannot listen on listeners.wellknown {wk.host}:{wk.port}: {exc.socketError}",
                  file=sys.stderr)
            return 1
        print(f"console: well-known names on https://{wk.host}:{wk.port}/", flush=True)
    plain = cfg.listeners.wellknown_http
    if plain.enabled:
        from services.console.wellknown_http import wellknown_http_factory

        try:
            reactor.listenTCP(plain.port, wellknown_http_factory(console), interface=plain.host)  # type: ignore[attr-defined]
        except CannotListenError as exc:
            print(f"console: cannot listen on listeners.wellknown_http {plain.host}:{plain.port}: {exc.socketError}",
                  file=sys.stderr)
            return 1
        print(f"console: well-known names on http://{plain.host}:{plain.port}/ (autoconfig, redirects, ACME)",
              flush=True)

    wanted = {name for name in SOURCES if getattr(cfg.listeners, name).enabled}
    seen: set[str] = set()

    def sample() -> None:
        reading = read_now(cfg)
        console.series.store(reading)
        seen.update(reading.sources)
        for m in reading.missing:
            print(f"console: not sampled: {m}", flush=True)

    def tick() -> None:
        # Every minute; every STARTUP_INTERVAL until each source answered once, so the baseline
        # of the counters is taken soon after the services start (they start together).
        delay = SAMPLE_INTERVAL if seen >= wanted else STARTUP_INTERVAL
        threads.deferToThread(sample).addErrback(lambda f: log.err(f, "console: sampling failed")).addBoth(
            lambda _: reactor.callLater(delay, tick))  # type: ignore[attr-defined]

    tick()
    reactor.suggestThreadPoolSize(4)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
