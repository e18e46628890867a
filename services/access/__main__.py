"""`python -m services.access -c CONFIG`: the IMAP and POP listeners (supervisor runs it)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.python import log

from appliance.config import CONFIG_ENV, DEFAULT_CONFIG, Config, ConfigError, load
from services.access import moves
from services.access.backend import Backend
from services.access.imap import IMAPConnection, metrics
from services.access.pop3 import POP3Server
from services.twisted_tls import TLSContext


def listen(cfg: Config, backend: Backend) -> list[Any]:
    tls = TLSContext(cfg.tls.cert, cfg.tls.key)
    ports = []
    for name, proto in (("imap", IMAPConnection), ("imaps", IMAPConnection), ("pop3", POP3Server), ("pop3s", POP3Server)):
        lst = getattr(cfg.listeners, name)
        if not lst.enabled:
            continue
        implicit = lst.tls == "implicit"

        def build(proto: Any = proto, implicit: bool = implicit) -> Any:
            return proto(backend, tls, implicit)

        factory = Factory.forProtocol(build)
        factory.noisy = False
        if implicit:
            ports.append(reactor.listenSSL(lst.port, factory, tls, interface=lst.host))  # type: ignore[attr-defined]
        else:
            ports.append(reactor.listenTCP(lst.port, factory, interface=lst.host))  # type: ignore[attr-defined]
        print(f"access: {name} listening on {lst.host}:{lst.port} (tls={lst.tls})", flush=True)
    return ports


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="services.access", description=__doc__)
    ap.add_argument("-c", "--config", default=os.environ.get(CONFIG_ENV, DEFAULT_CONFIG))
    args = ap.parse_args(argv)
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(f"access: {exc}", file=sys.stderr)
        return 2
    try:
        backend = Backend.from_config(cfg)
        listen(cfg, backend)
        moves.listen(cfg.paths.run_dir)  # `appliance user move` holds accounts here (services/access/moves.py)
        if cfg.listeners.access_metrics.enabled:
            metrics.serve(cfg.listeners.access_metrics.host, cfg.listeners.access_metrics.port)
            print(f"access: metrics on http://{cfg.listeners.access_metrics.host}:{cfg.listeners.access_metrics.port}"
                  "/metrics", flush=True)
    except (OSError, SSL.Error) as exc:
        print(f"access: cannot start: {exc}", file=sys.stderr)
        return 1
    reactor.suggestThreadPoolSize(8)  # type: ignore[attr-defined]
    log.startLogging(sys.stdout, setStdout=False)
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
